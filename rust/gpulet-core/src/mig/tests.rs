//! Tests of the MIG module. Property tests run with a fixed seed and no failure persistence
//! (see [`fixed`]), so they draw the same cases on every run whatever `PROPTEST_RNG_SEED` says.

use super::*;
use crate::error::CoreError;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use std::collections::{BTreeMap, BTreeSet};

const A100_40: &str = "A100-SXM4-40GB";
const H100: &str = "H100-80GB";
const BASE_A100_40: [&str; 5] = ["1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"];

fn fixed(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x6d69_6770),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn lay(items: &[(&str, u32)]) -> Layout {
    items.iter().map(|(p, s)| Placement::new(*p, *s)).collect()
}

fn multiset(l: &Layout) -> Vec<String> {
    let mut v: Vec<String> = l.placements().iter().map(|p| p.profile.clone()).collect();
    v.sort();
    v
}

fn mig_layout_msg(r: crate::Result<()>) -> String {
    match r {
        Err(CoreError::MigLayout(m)) => m,
        other => panic!("expected a MigLayout error, got {other:?}"),
    }
}

#[test]
fn models_resolve_by_every_name_and_reject_the_rest() {
    for name in [
        H100,
        "H100",
        "NVIDIA H100 80GB HBM3",
        "0x2330",
        "0x233010DE",
    ] {
        assert_eq!(model(name).unwrap().key(), H100, "{name}");
    }
    match model("H100-81GB") {
        Err(CoreError::UnknownModel { name, known }) => {
            assert_eq!(name, "H100-81GB");
            assert!(known.contains("A100-SXM4-40GB"), "{known}");
        }
        other => panic!("{:?}", other.map(|m| m.key())),
    }
    match model("T4") {
        Err(CoreError::InvalidArgument(m)) => {
            assert!(m.contains("T4-16GB (Tesla T4) does not support MIG"), "{m}");
            assert!(m.contains("H100-80GB"), "{m}");
        }
        other => panic!("{:?}", other.map(|m| m.key())),
    }
    assert_eq!(profiles("A30").unwrap().len(), 5);
}

#[test]
fn every_catalog_model_builds() {
    for m in crate::catalog::models().iter().filter(|m| m.mig_capable()) {
        let mm = model(m.key).unwrap();
        let full = mm.layouts::<&str>(None, true).unwrap();
        assert!(!full.is_empty(), "{}", m.key);
        for l in &full {
            mm.validate(l).unwrap();
        }
    }
}

#[test]
fn layout_counts_match_mig_geometry_reference() {
    // docs/mig-catalog.md, "Layout counts". Our "all layouts" include the empty layout; the
    // counts of 297 placement-distinct partial layouts and 37 multisets do not.
    let all = layouts(A100_40, Some(&BASE_A100_40), false).unwrap();
    assert_eq!(all.len(), 298);
    assert!(all[0].is_empty());
    let multisets: BTreeSet<Vec<String>> = all.iter().map(multiset).collect();
    assert_eq!(multisets.len(), 38);
    let maximal = layouts(A100_40, Some(&BASE_A100_40), true).unwrap();
    assert_eq!(maximal.len(), 19);
    let maximal_sets: BTreeSet<Vec<String>> = maximal.iter().map(multiset).collect();
    assert_eq!(maximal_sets.len(), 14);
    // 3 of the 19 strand a compute slice: those with 3g.20gb@0.
    let stranding: Vec<&Layout> = maximal
        .iter()
        .filter(|l| stranded(A100_40, l).unwrap().compute_slices == 1)
        .collect();
    assert_eq!(stranding.len(), 3);
    assert!(stranding
        .iter()
        .all(|l| l.placements().contains(&Placement::new("3g.20gb", 0))));

    let mut with_double = BASE_A100_40.to_vec();
    with_double.push("1g.10gb");
    let maximal = layouts(A100_40, Some(&with_double), true).unwrap();
    assert_eq!(maximal.len(), 78);
    assert_eq!(
        maximal.iter().map(multiset).collect::<BTreeSet<_>>().len(),
        38
    );

    let a30 = layouts("A30", Some(&["1g.6gb", "2g.12gb", "4g.24gb"]), true).unwrap();
    assert_eq!(a30.len(), 5);
    assert_eq!(a30.iter().map(multiset).collect::<BTreeSet<_>>().len(), 4);

    // All seven A100-40GB profiles (+me included): derived here, no reference figure.
    assert_eq!(layouts::<&str>(A100_40, None, false).unwrap().len(), 2319);
    assert_eq!(layouts::<&str>(A100_40, None, true).unwrap().len(), 239);
}

#[test]
fn layouts_are_distinct_and_valid() {
    let all = layouts::<&str>(H100, None, false).unwrap();
    let set: BTreeSet<&Layout> = all.iter().collect();
    assert_eq!(set.len(), all.len());
    for l in &all {
        validate(H100, l).unwrap();
    }
    match layouts(H100, Some(&["2g.10gb"]), false) {
        Err(CoreError::MigLayout(m)) => {
            assert!(m.contains("unknown MIG profile \"2g.10gb\""), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn validation_names_the_clash() {
    let m = mig_layout_msg(validate(H100, &lay(&[("3g.40gb", 0), ("2g.20gb", 2)])));
    assert_eq!(m, "3g.40gb@0 overlaps 2g.20gb@2 on memory slices 2-3");
    let m = mig_layout_msg(validate(H100, &lay(&[("1g.20gb", 7)])));
    assert_eq!(
        m,
        "1g.20gb cannot start at slice 7 on H100-80GB; placements are 0,2,4,6"
    );
    let m = mig_layout_msg(validate(H100, &lay(&[("1g.10gb", 7)])));
    assert_eq!(
        m,
        "1g.10gb cannot start at slice 7 on H100-80GB; placements are 0,1,2,3,4,5,6"
    );
    let m = mig_layout_msg(validate(
        H100,
        &lay(&[("1g.10gb+me", 0), ("1g.10gb+me", 1)]),
    ));
    assert_eq!(
        m,
        "max 1 instance of 1g.10gb+me on H100-80GB; the layout has 2"
    );
    let m = mig_layout_msg(validate(
        H100,
        &lay(&[("4g.40gb", 0), ("3g.40gb", 4), ("1g.10gb", 6)]),
    ));
    assert_eq!(m, "compute slices 8 > 7: 4g.40gb@0 + 3g.40gb@4 + 1g.10gb@6 needs 8 compute slices and H100-80GB has 7");
    let m = mig_layout_msg(validate(H100, &lay(&[("1g.10gb", 3), ("1g.10gb", 3)])));
    assert_eq!(m, "1g.10gb@3 overlaps 1g.10gb@3 on memory slice 3");
    let m = mig_layout_msg(validate(H100, &lay(&[("1g.5gb", 0)])));
    assert!(
        m.starts_with("unknown MIG profile \"1g.5gb\" for H100-80GB; its profiles are 1g.10gb"),
        "{m}"
    );
    // Resource-name spellings resolve to NVML's.
    validate(
        H100,
        &lay(&[("1g.10gb.me", 0), ("nvidia.com/mig-3g.40gb", 4)]),
    )
    .unwrap();
    validate(H100, &Layout::empty()).unwrap();
}

#[test]
fn fragmentation_examples() {
    let f = |l: &[(&str, u32)]| fragmentation(H100, &lay(l)).unwrap();
    assert_eq!(f(&[]), 0.0);
    assert_eq!(f(&[("7g.80gb", 0)]), 0.0);
    assert_eq!(f(&[("4g.40gb", 0), ("3g.40gb", 4)]), 0.0);
    let seven: Vec<(&str, u32)> = (0..7).map(|s| ("1g.10gb", s)).collect();
    assert_eq!(f(&seven), 1.0 / 16.0);
    assert_eq!(f(&[("3g.40gb", 0)]), 1.0 / 14.0);
    assert_eq!(
        f(&[
            ("1g.20gb", 0),
            ("1g.20gb", 2),
            ("1g.20gb", 4),
            ("1g.20gb", 6)
        ]),
        3.0 / 14.0
    );
    let s = stranded(
        H100,
        &lay(&[("3g.40gb", 0), ("2g.20gb", 4), ("1g.10gb", 6)]),
    )
    .unwrap();
    assert_eq!((s.memory_slices, s.compute_slices), (1, 1));
    assert!(fragmentation(H100, &lay(&[("3g.40gb", 0), ("3g.40gb", 2)])).is_err());
}

#[test]
fn plan_beats_first_fit() {
    // First fit puts 3g.20gb at 0 and then has no room for 4g.20gb (placement 0 only).
    let reqs = ["3g.20gb", "4g.20gb"];
    match first_fit(A100_40, &reqs, None) {
        Err(CoreError::Infeasible(m)) => assert!(m.contains("4g.20gb (request 2 of 2)"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        plan(A100_40, &reqs, None).unwrap(),
        lay(&[("4g.20gb", 0), ("3g.20gb", 4)])
    );
    // 1g then 4g: first fit takes slice 0 for the 1g.
    assert!(first_fit(A100_40, &["1g.5gb", "4g.20gb"], None).is_err());
    assert_eq!(
        plan(A100_40, &["1g.5gb", "4g.20gb"], None).unwrap(),
        lay(&[("4g.20gb", 0), ("1g.5gb", 4)])
    );
}

#[test]
fn plan_prefers_least_stranded_and_keeps_existing() {
    // A lone 3g at 0 would strand a compute slice; at 4 it leaves room for a 4g.
    assert_eq!(
        plan(H100, &["3g.40gb"], None).unwrap(),
        lay(&[("3g.40gb", 4)])
    );
    // Seven 1g fill slices 0-6 (slice 7 has no 1g placement).
    let seven = plan(H100, &["1g.10gb"; 7], None).unwrap();
    assert_eq!(
        seven,
        (0..7).map(|s| Placement::new("1g.10gb", s)).collect()
    );
    let existing = lay(&[("3g.40gb", 4)]);
    let l = plan(H100, &["2g.20gb", "1g.10gb"], Some(&existing)).unwrap();
    assert!(l.placements().contains(&Placement::new("3g.40gb", 4)));
    assert_eq!(l.len(), 3);
    validate(H100, &l).unwrap();
    assert_eq!(fragmentation(H100, &l).unwrap(), 0.0);
    // Deterministic.
    assert_eq!(
        l,
        plan(H100, &["1g.10gb", "2g.20gb"], Some(&existing)).unwrap()
    );
}

#[test]
fn plan_errors_are_typed_and_explain() {
    match plan(
        H100,
        &["3g.40gb", "4g.40gb", "1g.10gb"],
        Some(&lay(&[("2g.20gb", 0)])),
    ) {
        Err(CoreError::Infeasible(m)) => {
            assert!(m.starts_with("cannot place 3g.40gb, 4g.40gb, 1g.10gb on H100-80GB beside 2g.20gb@0: free memory slices 2-7 and 5 compute slices are left"), "{m}");
            assert!(m.contains("at most 2 of the 3 requests fit at once"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    match plan(H100, &["7g.80gb", "7g.80gb"], None) {
        Err(CoreError::Infeasible(m)) => {
            assert!(m.contains("7g.80gb×2 on an empty H100-80GB"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    match plan(H100, &["9g.90gb"], None) {
        Err(CoreError::MigLayout(m)) => {
            assert!(m.contains("unknown MIG profile \"9g.90gb\""), "{m}")
        }
        other => panic!("{other:?}"),
    }
    match plan(
        H100,
        &["1g.10gb"],
        Some(&lay(&[("3g.40gb", 0), ("2g.20gb", 2)])),
    ) {
        Err(CoreError::MigLayout(m)) => assert!(m.contains("overlaps"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        plan("Nope", &["1g.10gb"], None),
        Err(CoreError::UnknownModel { .. })
    ));
    assert_eq!(plan::<&str>(H100, &[], None).unwrap(), Layout::empty());
}

/// Brute force: the least stranded cost over all layouts that contain `existing` and add
/// exactly `requests`, or `None` if there is none.
fn brute_force(model_name: &str, requests: &[&str], existing: &Layout) -> Option<u32> {
    let m = model(model_name).unwrap();
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for r in requests {
        *want
            .entry(m.profile(r).unwrap().name.to_string())
            .or_default() += 1;
    }
    for p in existing.placements() {
        *want.entry(p.profile.clone()).or_default() += 1;
    }
    let mut best: Option<u32> = None;
    for l in m.layouts::<&str>(None, false).unwrap() {
        let mut have: BTreeMap<String, usize> = BTreeMap::new();
        for p in l.placements() {
            *have.entry(p.profile.clone()).or_default() += 1;
        }
        if have == want
            && existing
                .placements()
                .iter()
                .all(|p| l.placements().contains(p))
        {
            let (s, _) = m.state_of(&l).unwrap();
            let cost = m.cost(s);
            best = Some(best.map_or(cost, |b| b.min(cost)));
        }
    }
    best
}

/// Every multiset of at most `max` names (as sorted-by-index lists), the empty one first.
fn multisets<'a>(names: &[&'a str], max: usize) -> Vec<Vec<&'a str>> {
    let mut out = vec![Vec::new()];
    let mut frontier: Vec<(Vec<&str>, usize)> = vec![(Vec::new(), 0)];
    for _ in 0..max {
        let mut next = Vec::new();
        for (set, from) in &frontier {
            for (i, n) in names.iter().enumerate().skip(*from) {
                let mut t = set.clone();
                t.push(*n);
                out.push(t.clone());
                next.push((t, i));
            }
        }
        frontier = next;
    }
    out
}

fn cost_of(model_name: &str, l: &Layout) -> u32 {
    let m = model(model_name).unwrap();
    m.cost(m.state_of(l).unwrap().0)
}

#[test]
fn plan_is_exact_on_every_small_request_set() {
    // Every multiset of up to 3 requests over all A100-40GB profiles, on an empty GPU and beside
    // two existing layouts, against brute force over all layouts.
    let names: Vec<&str> = profiles(A100_40).unwrap().iter().map(|p| p.name).collect();
    let existing = [
        Layout::empty(),
        lay(&[("3g.20gb", 4)]),
        lay(&[("1g.5gb", 1), ("2g.10gb", 4)]),
    ];
    let sets = multisets(&names, 3);
    assert_eq!(sets.len(), 1 + 7 + 28 + 84);
    for ex in &existing {
        for reqs in &sets {
            let got = plan(A100_40, reqs, Some(ex));
            match (brute_force(A100_40, reqs, ex), got) {
                (None, Err(CoreError::Infeasible(_))) => {}
                (Some(best), Ok(l)) => {
                    validate(A100_40, &l).unwrap();
                    assert_eq!(cost_of(A100_40, &l), best, "{reqs:?} beside {ex}: {l}");
                    assert_eq!(multiset(&l.minus(ex)), {
                        let mut v: Vec<String> = reqs.iter().map(|s| s.to_string()).collect();
                        v.sort();
                        v
                    });
                }
                (b, g) => panic!("{reqs:?} beside {ex}: brute force {b:?}, plan {g:?}"),
            }
        }
    }
}

fn node(models: &[&'static str], existing: &[Layout]) -> Vec<(&'static str, Layout)> {
    models
        .iter()
        .enumerate()
        .map(|(i, m)| (*m, existing.get(i).cloned().unwrap_or_default()))
        .collect()
}

fn node_gpus<'a>(n: &'a [(&'static str, Layout)]) -> Vec<NodeGpu<'a>> {
    n.iter().map(|(m, l)| NodeGpu::new(m, Some(l))).collect()
}

/// Brute force over every assignment of requests to GPUs; each GPU then planned exactly.
fn node_brute_force(n: &[(&'static str, Layout)], requests: &[&str]) -> Option<u64> {
    let g = n.len();
    let total = g.pow(requests.len() as u32);
    let mut best: Option<u64> = None;
    for code in 0..total {
        let mut per: Vec<Vec<&str>> = vec![Vec::new(); g];
        let mut c = code;
        for r in requests {
            per[c % g].push(r);
            c /= g;
        }
        let mut cost = 0u64;
        let mut ok = true;
        for (i, (m, ex)) in n.iter().enumerate() {
            // All models used here share 2*M*C = 112.
            match plan(m, &per[i], Some(ex)) {
                Ok(l) => cost += u64::from(cost_of(m, &l)),
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            best = Some(best.map_or(cost, |b| b.min(cost)));
        }
    }
    best
}

#[test]
fn plan_node_fills_a_node_and_prefers_low_gpus() {
    let n = node(&[H100; 8], &[]);
    let gpus = node_gpus(&n);
    // Two 1g requests: both on GPU 0, the rest untouched.
    let out = plan_node(&gpus, &["1g.10gb", "1g.10gb"]).unwrap();
    assert_eq!(out[0].len(), 2);
    assert!(out[1..].iter().all(Layout::is_empty));
    // A full node: 8 × (4g + 3g).
    let mut reqs = vec!["4g.40gb"; 8];
    reqs.extend(["3g.40gb"; 8]);
    let out = plan_node(&gpus, &reqs).unwrap();
    for l in &out {
        assert_eq!(*l, lay(&[("4g.40gb", 0), ("3g.40gb", 4)]));
    }
    // One more does not fit, and the error says why.
    reqs.push("1g.10gb");
    match plan_node(&gpus, &reqs) {
        Err(CoreError::Infeasible(m)) => {
            assert!(
                m.contains("they need 57 compute slices and the GPUs have 56 free"),
                "{m}"
            );
            assert!(
                m.contains("GPU 7 (H100-80GB): free memory slices 0-7 and 7 compute slices"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn plan_node_beats_first_fit_and_keeps_existing() {
    let n = node(&[H100, H100], &[lay(&[("1g.10gb", 0)]), Layout::empty()]);
    let gpus = node_gpus(&n);
    let reqs = ["4g.40gb", "3g.40gb", "3g.40gb", "2g.20gb", "1g.10gb"];
    // First fit: 4g goes to GPU 1 (GPU 0's slice 0 is taken), 3g to GPU 0 @4, 3g to GPU 1 @4,
    // 2g to GPU 0 @2, 1g to GPU 0 @1 – fits; a harder case below.
    assert!(first_fit_node(&gpus, &reqs).is_ok());
    let out = plan_node(&gpus, &reqs).unwrap();
    assert!(out[0].placements().contains(&Placement::new("1g.10gb", 0)));
    for (i, l) in out.iter().enumerate() {
        validate(H100, l).unwrap_or_else(|e| panic!("GPU {i}: {e}"));
    }
    let hard = ["3g.40gb", "3g.40gb", "4g.40gb", "4g.40gb"];
    let empty = node(&[H100, H100], &[]);
    assert!(first_fit_node(&node_gpus(&empty), &hard).is_err());
    let out = plan_node(&node_gpus(&empty), &hard).unwrap();
    assert_eq!(out, vec![lay(&[("4g.40gb", 0), ("3g.40gb", 4)]); 2]);
}

#[test]
fn plan_node_bad_inputs() {
    let n = node(
        &[H100, A100_40],
        &[Layout::empty(), lay(&[("3g.20gb", 0), ("2g.10gb", 2)])],
    );
    match plan_node(&node_gpus(&n), &["1g.10gb"]) {
        Err(CoreError::MigLayout(m)) => assert!(m.starts_with("GPU 1: 3g.20gb@0 overlaps"), "{m}"),
        other => panic!("{other:?}"),
    }
    let n = node(&[H100, A100_40], &[]);
    match plan_node(&node_gpus(&n), &["9g.1gb"]) {
        Err(CoreError::MigLayout(m)) => {
            assert!(m.contains("H100-80GB: 1g.10gb"), "{m}");
            assert!(m.contains("A100-SXM4-40GB: 1g.5gb"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        plan_node::<&str>(&[], &[]),
        Err(CoreError::InvalidArgument(_))
    ));
    // Mixed models: 1g.5gb exists only on the A100.
    let out = plan_node(&node_gpus(&n), &["1g.5gb", "1g.10gb"]).unwrap();
    assert_eq!(out[1].counts().get("1g.5gb"), Some(&1));
}

#[test]
fn plan_node_agrees_with_plan_on_one_gpu() {
    let names: Vec<&str> = profiles(H100).unwrap().iter().map(|p| p.name).collect();
    for existing in [
        Layout::empty(),
        lay(&[("2g.20gb", 2)]),
        lay(&[("3g.40gb", 0)]),
    ] {
        for reqs in multisets(&names, 3) {
            let one = plan(H100, &reqs, Some(&existing));
            let n = plan_node(&[NodeGpu::new(H100, Some(&existing))], &reqs);
            match (one, n) {
                (Ok(a), Ok(b)) => assert_eq!(vec![a], b, "{reqs:?} beside {existing}"),
                (Err(CoreError::Infeasible(_)), Err(CoreError::Infeasible(_))) => {}
                (a, b) => panic!("{reqs:?} beside {existing}: plan {a:?}, plan_node {b:?}"),
            }
        }
    }
}

#[test]
fn plan_node_is_fast_enough_for_a_full_mixed_node() {
    let n = node(&[H100; 8], &[]);
    let gpus = node_gpus(&n);
    let mut reqs = vec!["1g.10gb"; 10];
    reqs.extend(["1g.20gb"; 6]);
    reqs.extend(["2g.20gb"; 6]);
    reqs.extend(["3g.40gb"; 4]);
    reqs.extend(["4g.40gb"; 2]);
    reqs.extend(["1g.10gb+me"; 3]);
    let out = plan_node(&gpus, &reqs).unwrap();
    let placed: usize = out.iter().map(Layout::len).sum();
    assert_eq!(placed, reqs.len());
}

proptest! {
    #![proptest_config(fixed(48))]

    #[test]
    fn plan_node_finds_a_fit_whenever_one_exists(
        reqs in proptest::collection::vec(0usize..7, 0..6),
        pre in proptest::collection::vec(0usize..4, 2..=3),
    ) {
        let names: Vec<&str> = profiles(H100).unwrap().iter().map(|p| p.name).collect();
        let reqs: Vec<&str> = reqs.into_iter().map(|i| names[i]).collect();
        let pre_layouts = [
            Layout::empty(),
            lay(&[("1g.10gb", 0)]),
            lay(&[("3g.40gb", 0)]),
            lay(&[("2g.20gb", 2), ("1g.20gb", 6)]),
        ];
        let existing: Vec<Layout> = pre.iter().map(|&i| pre_layouts[i].clone()).collect();
        let models = vec![H100; existing.len()];
        let n = node(&models, &existing);
        let gpus = node_gpus(&n);
        let got = plan_node(&gpus, &reqs);
        match (node_brute_force(&n, &reqs), got) {
            (None, Err(CoreError::Infeasible(_))) => {}
            (Some(best), Ok(out)) => {
                let mut cost = 0u64;
                for (i, l) in out.iter().enumerate() {
                    validate(H100, l).unwrap();
                    prop_assert!(existing[i].placements().iter().all(|p| l.placements().contains(p)));
                    cost += u64::from(cost_of(H100, l));
                }
                prop_assert_eq!(cost, best);
                let placed: usize = out.iter().zip(&existing).map(|(l, e)| l.len() - e.len()).sum();
                prop_assert_eq!(placed, reqs.len());
            }
            (b, g) => prop_assert!(false, "{:?}: brute force {:?}, plan_node {:?}", reqs, b, g),
        }
    }

    #[test]
    fn plan_returns_valid_layouts_and_fragmentation_is_a_fraction(
        idx in proptest::collection::vec(0usize..7, 0..8),
        model_i in 0usize..4,
    ) {
        let model_name = ["H100-80GB", "A100-SXM4-40GB", "A30", "B200"][model_i];
        let names: Vec<&str> = profiles(model_name).unwrap().iter().map(|p| p.name).collect();
        let reqs: Vec<&str> = idx.into_iter().map(|i| names[i % names.len()]).collect();
        match plan(model_name, &reqs, None) {
            Ok(l) => {
                validate(model_name, &l).unwrap();
                let f = fragmentation(model_name, &l).unwrap();
                prop_assert!((0.0..=1.0).contains(&f));
                prop_assert_eq!(l.len(), reqs.len());
            }
            Err(CoreError::Infeasible(_)) => {
                prop_assert!(first_fit(model_name, &reqs, None).is_err());
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }
}
