//! Tests of preferred allocation (against the baseline) and of the ledger.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use super::*;
use crate::error::CoreError;
use crate::topology::{PcieLevel, Topology};

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x6770_756c_6574),
        failure_persistence: None,
        ..Config::default()
    }
}

/// DGX-1 with Volta: hybrid cube-mesh NVLinks, a PCIe switch per pair, two sockets.
fn dgx1v() -> Topology {
    let nvlinks = [
        ((0, 1), 1),
        ((0, 2), 1),
        ((0, 3), 2),
        ((0, 4), 2),
        ((1, 2), 2),
        ((1, 3), 1),
        ((1, 5), 2),
        ((2, 3), 2),
        ((2, 6), 1),
        ((3, 7), 1),
        ((4, 5), 1),
        ((4, 6), 1),
        ((4, 7), 2),
        ((5, 6), 2),
        ((5, 7), 1),
        ((6, 7), 2),
    ];
    let mut pcie = Vec::new();
    for a in 0..8usize {
        for b in a + 1..8 {
            let level = if a / 2 == b / 2 {
                PcieLevel::SingleSwitch
            } else if a / 4 == b / 4 {
                PcieLevel::HostBridge
            } else {
                PcieLevel::CrossCpu
            };
            pcie.push(((a, b), level));
        }
    }
    Topology::new(
        8,
        &nvlinks,
        &pcie,
        Some(vec![0, 0, 0, 0, 1, 1, 1, 1]),
        false,
    )
    .unwrap()
}

/// Allocate `size` at a time from the full node until too few remain.
fn successive(topo: &Topology, size: usize) -> Vec<Vec<usize>> {
    let mut available: Vec<usize> = (0..topo.gpu_count()).collect();
    let mut out = Vec::new();
    while available.len() >= size {
        let got = preferred(topo, &available, &[], size).unwrap();
        assert_eq!(got, baseline::best_effort(topo, &available, &[], size));
        available.retain(|g| !got.contains(g));
        out.push(got);
    }
    out
}

#[test]
fn dgx1_volta_pairs_and_quads() {
    let t = dgx1v();
    assert_eq!(
        successive(&t, 2),
        vec![vec![0, 3], vec![1, 2], vec![4, 7], vec![5, 6]]
    );
    assert_eq!(successive(&t, 4), vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
    assert_eq!(successive(&t, 8), vec![(0..8).collect::<Vec<_>>()]);
}

#[test]
fn scores_follow_upstream_table() {
    let t = dgx1v();
    // 0-3: two NVLinks, host bridge.
    assert_eq!(score(&t, &[0, 3]).unwrap(), 200 + 30);
    // 0-1: one NVLink, one switch.
    assert_eq!(score(&t, &[0, 1]).unwrap(), 100 + 50);
    // 0-5: cross-socket, no NVLink.
    assert_eq!(score(&t, &[0, 5]).unwrap(), 10);
    // 0-3: 230; 0-5 and 3-5: cross-socket, 10 each.
    assert_eq!(score(&t, &[0, 3, 5]).unwrap(), 230 + 10 + 10);
    assert_eq!(score(&t, &[]).unwrap(), 0);
    assert!(matches!(
        score(&t, &[0, 8]),
        Err(CoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        score(&t, &[1, 1]),
        Err(CoreError::InvalidArgument(_))
    ));
    let all = Allocator::new(&t);
    assert_eq!(
        all.score(&[0, 3, 5]).unwrap(),
        score(&t, &[0, 3, 5]).unwrap()
    );
}

#[test]
fn nvswitch_gives_every_pair_full_credit() {
    let t = Topology::new(
        4,
        &[],
        &[((0, 1), PcieLevel::SingleSwitch)],
        Some(vec![0, 0, 1, 1]),
        true,
    )
    .unwrap();
    assert_eq!(score(&t, &[0, 1]).unwrap(), 1800 + 50);
    assert_eq!(score(&t, &[0, 2]).unwrap(), 1800 + 10);
    // The uniform credit leaves the choice to PCIe.
    assert_eq!(preferred(&t, &[0, 1, 2, 3], &[], 2).unwrap(), vec![0, 1]);
    assert_eq!(preferred(&t, &[0, 1, 2, 3], &[2], 2).unwrap(), vec![2, 3]);
}

#[test]
fn impossible_requests_are_refused_not_panicked() {
    let t = dgx1v();
    let all: Vec<usize> = (0..8).collect();
    for (available, required, size) in [
        (&all[..], &[][..], 0),
        (&all[..], &[][..], 9),
        (&all[..2], &[3][..], 2),
        (&all[..], &[0, 1, 2][..], 2),
        (&all[..], &[8][..], 2),
        (&[0, 9][..], &[][..], 1),
        (&[][..], &[][..], 1),
    ] {
        let got = preferred(&t, available, required, size);
        assert!(
            matches!(got, Err(CoreError::InvalidArgument(_))),
            "{available:?} {required:?} {size}: {got:?}"
        );
        assert!(baseline::best_effort(&t, available, required, size).is_empty());
    }
    let e = preferred(&t, &[0, 1], &[3], 1).unwrap_err().to_string();
    assert!(e.contains("required GPU 3"), "{e}");
}

#[test]
fn size_one_and_trivial_sizes() {
    let t = dgx1v();
    assert_eq!(preferred(&t, &[5, 2, 7], &[], 1).unwrap(), vec![2]);
    assert_eq!(preferred(&t, &[5, 2, 7], &[7], 1).unwrap(), vec![7]);
    assert_eq!(preferred(&t, &[5, 2, 7], &[7, 2], 2).unwrap(), vec![2, 7]);
    assert_eq!(preferred(&t, &[5, 2, 7], &[], 3).unwrap(), vec![2, 5, 7]);
    // Duplicates and order do not matter.
    assert_eq!(preferred(&t, &[7, 5, 2, 5], &[], 1).unwrap(), vec![2]);
}

#[test]
fn padded_set_is_never_returned() {
    // go-gpuallocator#80: 5 available, size 3. Make the two leftover GPUs the best-linked pair
    // so that upstream's final pick would return the padded set.
    let t = Topology::new(5, &[((3, 4), 12)], &[], None, false).unwrap();
    let got = preferred(&t, &[0, 1, 2, 3, 4], &[], 3).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got, baseline::best_effort(&t, &[0, 1, 2, 3, 4], &[], 3));
}

#[test]
fn simple_policy_takes_lowest_indices() {
    let t = dgx1v();
    let got = preferred_with(&t, Policy::Simple, &[7, 1, 4, 6], &[6], 3).unwrap();
    assert_eq!(got, vec![1, 4, 6]);
    assert_eq!(
        Policy::from_name("best-effort").unwrap(),
        Policy::BestEffort
    );
    assert!(Policy::from_name("greedy").is_err());
}

#[test]
fn big_topologies_are_served_over_the_available_gpus() {
    // 20 GPUs: tables are built per call over the available ones.
    let links: Vec<_> = (0..10).map(|i| ((2 * i, 2 * i + 1), 4)).collect();
    let t = Topology::new(20, &links, &[], None, false).unwrap();
    let avail = [0, 3, 4, 5, 8, 9, 12, 19];
    let got = preferred(&t, &avail, &[], 2).unwrap();
    assert_eq!(got, baseline::best_effort(&t, &avail, &[], 2));
    assert_eq!(got, vec![4, 5]);
    let got = preferred(&t, &avail, &[19], 3).unwrap();
    assert_eq!(got, baseline::best_effort(&t, &avail, &[19], 3));
    let all: Vec<usize> = (0..20).collect();
    assert!(matches!(
        preferred(&t, &all, &[], 2),
        Err(CoreError::InvalidArgument(_))
    ));
}

#[test]
fn cache_returns_the_same_prepared_allocator() {
    let a = allocator_for(&dgx1v());
    let b = allocator_for(&dgx1v());
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!(a.gpu_count(), 8);
}

#[test]
fn partition_counts_match_the_reference_table() {
    assert_eq!(baseline::partition_count(8, 2), 105);
    assert_eq!(baseline::partition_count(8, 3), 280);
    assert_eq!(baseline::partition_count(8, 4), 35);
    assert_eq!(baseline::partition_count(16, 2), 2_027_025);
    assert_eq!(baseline::partition_count(16, 3), 22_422_400);
    assert_eq!(baseline::partition_count(16, 4), 2_627_625);
    assert_eq!(baseline::partition_count(16, 8), 6_435);
}

#[test]
fn baseline_enumerates_exactly_the_counted_partitions() {
    // Count through the baseline's own enumeration on tiny inputs via a score-free topology:
    // every partition ties, so the answer is the first partition's best set.
    let t = Topology::new(7, &[], &[], None, false).unwrap();
    let all: Vec<usize> = (0..7).collect();
    assert_eq!(baseline::best_effort(&t, &all, &[], 3), vec![0, 1, 2]);
    assert_eq!(preferred(&t, &all, &[], 3).unwrap(), vec![0, 1, 2]);
    assert_eq!(
        preferred(&t, &all, &[4], 3).unwrap(),
        baseline::best_effort(&t, &all, &[4], 3)
    );
}

fn arb_level() -> impl Strategy<Value = PcieLevel> {
    prop::sample::select(PcieLevel::ALL.to_vec())
}

/// A random topology of `n` GPUs: few levels and link counts, so ties are common.
fn arb_topology(max_n: usize) -> impl Strategy<Value = Topology> {
    (2..=max_n).prop_flat_map(|n| {
        let pairs = n * (n - 1) / 2;
        (
            prop::collection::vec(0u32..3, pairs),
            prop::collection::vec(arb_level(), pairs),
            any::<bool>(),
            0u8..4,
        )
            .prop_map(move |(links, levels, nvswitch, flavour)| {
                let mut nv = Vec::new();
                let mut pcie = Vec::new();
                let mut i = 0;
                for a in 0..n {
                    for b in a + 1..n {
                        match flavour {
                            // Uniform: everything ties.
                            0 => {}
                            1 => pcie.push(((a, b), levels[i])),
                            _ => {
                                pcie.push(((a, b), levels[i]));
                                if links[i] > 0 {
                                    nv.push(((a, b), links[i]));
                                }
                            }
                        }
                        i += 1;
                    }
                }
                Topology::new(n, &nv, &pcie, None, nvswitch && flavour == 3).unwrap()
            })
    })
}

fn arb_request(max_n: usize) -> impl Strategy<Value = (Topology, Vec<usize>, Vec<usize>, usize)> {
    arb_topology(max_n).prop_flat_map(|t| {
        let n = t.gpu_count();
        (
            Just(t),
            prop::collection::vec(any::<bool>(), n),
            prop::collection::vec(any::<bool>(), n),
            0..=n + 1,
            0u8..8,
        )
            .prop_map(move |(t, avail, req, size, noise)| {
                let available: Vec<usize> = (0..n).filter(|&g| avail[g]).collect();
                // Mostly required ⊆ available and small; sometimes not (refused).
                let required: Vec<usize> = (0..n)
                    .filter(|&g| req[g] && (noise == 0 || avail[g]))
                    .take(if noise == 1 { n } else { 3 })
                    .collect();
                (t, available, required, size)
            })
    })
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn preferred_equals_baseline((t, available, required, size) in arb_request(9)) {
        let fast = preferred(&t, &available, &required, size);
        let slow = baseline::best_effort(&t, &available, &required, size);
        match fast {
            Ok(got) => {
                prop_assert_eq!(&got, &slow);
                prop_assert_eq!(got.len(), size);
            }
            Err(CoreError::InvalidArgument(_)) => prop_assert!(slow.is_empty()),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

proptest! {
    #![proptest_config(config(40))]

    /// Through the per-call tables of big topologies too.
    #[test]
    fn per_call_tables_equal_baseline((t, available, required, size) in arb_request(8)) {
        // Embed the topology into a 17-GPU one; the extra GPUs are never available.
        let n = t.gpu_count();
        let mut nv = t.nvlink_pairs();
        nv.push(((n, 16), 1));
        let pcie = t.pcie_pairs();
        let big = Topology::new(17, &nv, &pcie, None, t.nvswitch()).unwrap();
        let fast = preferred(&big, &available, &required, size).unwrap_or_default();
        prop_assert_eq!(fast, baseline::best_effort(&t, &available, &required, size));
    }
}

// ---- ledger ----

fn registration(uuid: &str, replicas: u32, model: Option<&str>) -> GpuRegistration {
    GpuRegistration {
        uuid: uuid.to_string(),
        replicas,
        model: model.map(String::from),
        serves: None,
    }
}

fn ledger() -> Ledger {
    let l = Ledger::new();
    l.register_gpu(&registration("GPU-0", 0, None)).unwrap();
    l.register_gpu(&registration("GPU-1", 4, None)).unwrap();
    l.register_gpu(&registration("GPU-2", 0, Some("A100-SXM4-40GB")))
        .unwrap();
    l
}

fn pod(name: &str) -> Owner {
    Owner::container(Path::DevicePlugin, "default", name, "main", None)
}

fn claim(uid: &str) -> Owner {
    Owner::claim(Path::Dra, uid)
}

#[test]
fn ledger_allocate_release_idempotent() {
    let l = ledger();
    let a = pod("a");
    l.allocate(&a, &[Device::gpu("GPU-0")]).unwrap();
    l.allocate(&a, &[Device::gpu("GPU-0")]).unwrap();
    assert_eq!(l.devices_of(&a), vec![Device::gpu("GPU-0")]);
    assert_eq!(l.holder_of(&Device::gpu("GPU-0")).unwrap(), Some(a.clone()));
    // Other devices for a holding owner are refused.
    let e = l.allocate(&a, &[Device::gpu("GPU-2")]).unwrap_err();
    assert!(matches!(e, CoreError::Conflict(_)), "{e}");
    // Another owner conflicts, naming device and holder.
    let e = l
        .allocate(&pod("b"), &[Device::gpu("GPU-0")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("GPU-0 is held by container default/a/main via device-plugin"),
        "{e}"
    );
    assert_eq!(l.release(&a), vec![Device::gpu("GPU-0")]);
    assert_eq!(l.release(&a), vec![]);
    assert_eq!(l.holder_of(&Device::gpu("GPU-0")).unwrap(), None);
}

#[test]
fn ledger_whole_gpu_versus_parts() {
    let l = ledger();
    l.allocate(&pod("a"), &[Device::replica("GPU-1", 0)])
        .unwrap();
    l.allocate(
        &pod("b"),
        &[Device::replica("GPU-1", 1), Device::replica("GPU-1", 2)],
    )
    .unwrap();
    let e = l
        .allocate(&pod("c"), &[Device::gpu("GPU-1")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("GPU-1::0 is held by container default/a/main"),
        "{e}"
    );
    let e = l
        .allocate(&pod("c"), &[Device::replica("GPU-1", 1)])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("GPU-1::1 is held by container default/b/main"),
        "{e}"
    );
    // DRA cannot join a GPU shared through the device plugin.
    let e = l
        .allocate(&claim("x"), &[Device::replica("GPU-1", 3)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("device-plugin path"), "{e}");

    // A whole GPU blocks its MIG slices; slices block the whole GPU and overlapping slices.
    l.allocate(&claim("x"), &[Device::mig("GPU-2", 19, 0)])
        .unwrap();
    l.allocate(&claim("y"), &[Device::mig("GPU-2", 19, 1)])
        .unwrap();
    let e = l
        .allocate(&claim("z"), &[Device::gpu("GPU-2")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("split into MIG slices"), "{e}");
    // 3g.20gb (id 9) at 0 spans memory slices 0-3.
    let e = l
        .allocate(&claim("z"), &[Device::mig("GPU-2", 9, 0)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlaps"), "{e}");
    l.allocate(&claim("z"), &[Device::mig("GPU-2", 9, 4)])
        .unwrap();
    let u = l.utilisation();
    assert_eq!(
        (u.gpus, u.gpus_free, u.gpus_shared, u.gpus_held_whole),
        (3, 1, 2, 0)
    );
    assert_eq!((u.replicas, u.replicas_held, u.mig_slices_held), (4, 3, 3));
    assert_eq!((u.owners, u.owners_device_plugin, u.owners_dra), (5, 2, 3));
}

#[test]
fn ledger_refuses_unknown_and_contradictory() {
    let l = ledger();
    let a = pod("a");
    for (devices, needle) in [
        (vec![Device::gpu("GPU-9")], "not registered"),
        (vec![Device::replica("GPU-1", 4)], "GPU-1::0 to GPU-1::3"),
        (vec![Device::replica("GPU-0", 0)], "not shared"),
        (vec![Device::mig("GPU-0", 19, 0)], "without its model"),
        (vec![Device::mig("GPU-2", 99, 0)], "no MIG profile id 99"),
        (vec![Device::mig("GPU-2", 9, 2)], "cannot start"),
        (
            vec![Device::gpu("GPU-1"), Device::replica("GPU-1", 0)],
            "whole and also",
        ),
        (
            vec![Device::mig("GPU-2", 9, 0), Device::mig("GPU-2", 19, 3)],
            "overlap",
        ),
        (vec![], "names no device"),
    ] {
        let e = l.allocate(&a, &devices).unwrap_err();
        assert!(
            matches!(e, CoreError::InvalidArgument(_)),
            "{devices:?}: {e}"
        );
        assert!(e.to_string().contains(needle), "{e}");
    }
    // Nothing changed.
    assert_eq!(l.utilisation().owners, 0);
    assert!(matches!(
        l.allocate(&Owner::claim(Path::Dra, ""), &[Device::gpu("GPU-0")]),
        Err(CoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        l.register_gpu(&registration("GPU-3", 0, Some("no-such-gpu"))),
        Err(CoreError::UnknownModel { .. })
    ));
}

#[test]
fn ledger_failed_allocate_changes_nothing() {
    let l = ledger();
    l.allocate(&pod("a"), &[Device::replica("GPU-1", 2)])
        .unwrap();
    let before = l.snapshot();
    // The first device is free, the second conflicts: neither is taken.
    let e = l.allocate(
        &pod("b"),
        &[Device::gpu("GPU-0"), Device::replica("GPU-1", 2)],
    );
    assert!(matches!(e, Err(CoreError::Conflict(_))));
    assert_eq!(l.snapshot(), before);
    assert_eq!(l.holder_of(&Device::gpu("GPU-0")).unwrap(), None);
}

#[test]
fn ledger_serves_and_registration_changes() {
    let l = Ledger::new();
    let mut reg = registration("GPU-0", 2, None);
    reg.serves = Some(Path::Dra);
    l.register_gpu(&reg).unwrap();
    let e = l
        .allocate(&pod("a"), &[Device::replica("GPU-0", 0)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("served by the dra path"), "{e}");
    assert_eq!(l.free_devices(Some(Path::DevicePlugin)), vec![]);
    l.allocate(&claim("c"), &[Device::replica("GPU-0", 0)])
        .unwrap();
    assert_eq!(
        l.free_devices(Some(Path::Dra)),
        vec![Device::replica("GPU-0", 1)]
    );
    // Same settings again: fine; other settings while held: refused; after release: fine.
    l.register_gpu(&reg).unwrap();
    reg.replicas = 4;
    assert!(matches!(l.register_gpu(&reg), Err(CoreError::Conflict(_))));
    assert!(matches!(
        l.unregister_gpu("GPU-0"),
        Err(CoreError::Conflict(_))
    ));
    l.release(&claim("c"));
    l.register_gpu(&reg).unwrap();
    assert_eq!(l.gpus()[0].replicas, 4);
    l.unregister_gpu("GPU-0").unwrap();
    assert!(l.gpus().is_empty());
    assert!(l.unregister_gpu("GPU-0").is_err());
    assert!(l.register_gpu(&registration("GPU-0::1", 0, None)).is_err());
    assert!(l
        .register_gpu(&registration("GPU-0", ledger::MAX_REPLICAS + 1, None))
        .is_err());
}

#[test]
fn ledger_free_devices_lists_what_can_be_taken() {
    let l = ledger();
    let free = l.free_devices(None);
    assert!(free.contains(&Device::gpu("GPU-0")));
    assert!(free.contains(&Device::replica("GPU-1", 3)));
    assert!(free.contains(&Device::mig("GPU-2", 0, 0)));
    // 1g.5gb (id 19) at memory slice 0.
    l.allocate(&claim("x"), &[Device::mig("GPU-2", 19, 0)])
        .unwrap();
    let free = l.free_devices(None);
    assert!(!free.contains(&Device::gpu("GPU-2")));
    assert!(!free.contains(&Device::mig("GPU-2", 9, 0)));
    assert!(free.contains(&Device::mig("GPU-2", 9, 4)));
    // Every listed device can indeed be allocated by a fresh owner.
    for (i, d) in free.iter().enumerate() {
        let o = claim(&format!("probe-{i}"));
        l.allocate(&o, std::slice::from_ref(d)).unwrap();
        l.release(&o);
    }
}

#[test]
fn ledger_snapshot_round_trip_and_refusals() {
    let l = ledger();
    l.allocate(
        &pod("a"),
        &[Device::replica("GPU-1", 0), Device::replica("GPU-1", 3)],
    )
    .unwrap();
    let with_uid = Owner::container(Path::DevicePlugin, "ns", "p", "c", Some("uid-1".into()));
    l.allocate(&with_uid, &[Device::gpu("GPU-0")]).unwrap();
    l.allocate(
        &claim("x"),
        &[Device::mig("GPU-2", 14, 0), Device::mig("GPU-2", 14, 2)],
    )
    .unwrap();
    let snap = l.snapshot();
    let back = Ledger::from_snapshot(&snap).unwrap();
    assert_eq!(back.snapshot(), snap);
    assert_eq!(back.holdings(), l.holdings());
    assert_eq!(back.usage(), l.usage());
    assert_eq!(back.gpus(), l.gpus());

    let fresh = Ledger::new();
    fresh.restore(&snap).unwrap();
    assert_eq!(fresh.snapshot(), snap);

    // Corrupted, newer, inconsistent: refused, and the ledger keeps its state.
    let text = String::from_utf8(snap.clone()).unwrap();
    let newer = text.replace("\"version\":1", "\"version\":2");
    let conflicting = text.replace("\"index\":3", "\"index\":0");
    let unknown = text.replacen("\"replicas\":4", "\"replicas\":2", 1);
    for bad in [
        &snap[..snap.len() / 2],
        newer.as_bytes(),
        conflicting.as_bytes(),
        unknown.as_bytes(),
        b"{}",
    ] {
        let e = fresh.restore(bad).unwrap_err();
        assert!(matches!(e, CoreError::Snapshot(_)), "{e}");
        assert_eq!(fresh.snapshot(), snap);
    }
    let body: serde_json::Value = serde_json::from_slice(&snap).unwrap();
    assert_eq!(body["schema"], "gpulet.ledger");
    // Holdings sorted by owner: device-plugin containers, then DRA claims.
    assert_eq!(body["body"]["holdings"][0]["owner"]["kind"], "container");
    assert_eq!(body["body"]["holdings"][2]["owner"]["kind"], "claim");
    assert_eq!(body["body"]["holdings"][2]["devices"][0]["kind"], "mig");
}

/// One random ledger operation.
#[derive(Clone, Debug)]
enum Op {
    Allocate(usize, Vec<Device>),
    Release(usize),
    Restore,
}

fn arb_device() -> impl Strategy<Value = Device> {
    prop_oneof![
        (0..4usize).prop_map(|g| Device::gpu(format!("GPU-{g}"))),
        (0..4usize, 0..4u32).prop_map(|(g, i)| Device::replica(format!("GPU-{g}"), i)),
        (
            0..4usize,
            prop::sample::select(vec![
                (0, 0),
                (0, 3),
                (0, 6),
                (5, 0),
                (5, 4),
                (9, 0),
                (9, 4),
                (19, 5)
            ])
        )
            .prop_map(|(g, (p, s))| Device::mig(format!("GPU-{g}"), p, s)),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..6usize, prop::collection::vec(arb_device(), 1..4)).prop_map(|(o, d)| Op::Allocate(o, d)),
        3 => (0..6usize).prop_map(Op::Release),
        1 => Just(Op::Restore),
    ]
}

fn owner_n(i: usize) -> Owner {
    if i % 2 == 0 {
        Owner::container(Path::DevicePlugin, "ns", format!("pod-{i}"), "c", None)
    } else {
        Owner::claim(Path::Dra, format!("claim-{i}"))
    }
}

/// Check the invariants of a ledger state from its public view.
fn check_invariants(l: &Ledger) {
    let holdings = l.holdings();
    let mut seen = std::collections::HashMap::new();
    for (o, devices) in &holdings {
        for d in devices {
            assert_eq!(l.holder_of(d).unwrap().as_ref(), Some(o), "{d}");
            assert!(
                seen.insert(d.clone(), o.clone()).is_none(),
                "{d} held twice"
            );
        }
    }
    // Compatibility between every two devices of different owners.
    let span = |p: u32, s: u32| {
        let m = crate::catalog::lookup("A100-SXM4-40GB").unwrap();
        let prof = m.mig.as_ref().unwrap().profile_by_id(p).unwrap();
        (s, s + prof.memory_slices)
    };
    let all: Vec<(&Device, &Owner)> = seen.iter().collect();
    for (i, (a, oa)) in all.iter().enumerate() {
        for (b, ob) in &all[i + 1..] {
            if oa == ob || a.parent() != b.parent() {
                continue;
            }
            assert_eq!(oa.path, ob.path, "{a} and {b} on one GPU through two paths");
            let ok = match (a, b) {
                (Device::Replica { index: x, .. }, Device::Replica { index: y, .. }) => x != y,
                (
                    Device::Mig {
                        profile_id: p,
                        start: s,
                        ..
                    },
                    Device::Mig {
                        profile_id: q,
                        start: t,
                        ..
                    },
                ) => {
                    let (a0, a1) = span(*p, *s);
                    let (b0, b1) = span(*q, *t);
                    a1 <= b0 || b1 <= a0
                }
                _ => false,
            };
            assert!(ok, "{a} ({oa}) and {b} ({ob}) held together");
        }
    }
    let u = l.utilisation();
    let usage = l.usage();
    assert_eq!(u.owners, holdings.len());
    assert_eq!(
        u.replicas_held,
        usage
            .iter()
            .map(|g| g.replicas_held as usize)
            .sum::<usize>()
    );
    assert_eq!(
        u.replicas_held,
        seen.keys()
            .filter(|d| matches!(d, Device::Replica { .. }))
            .count()
    );
    assert_eq!(
        u.mig_slices_held,
        seen.keys()
            .filter(|d| matches!(d, Device::Mig { .. }))
            .count()
    );
    assert_eq!(
        u.gpus_held_whole,
        seen.keys()
            .filter(|d| matches!(d, Device::Gpu { .. }))
            .count()
    );
    assert_eq!(u.gpus, u.gpus_free + u.gpus_shared + u.gpus_held_whole);
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn ledger_random_operations_keep_invariants(ops in prop::collection::vec(arb_op(), 1..40)) {
        let l = Ledger::new();
        for g in 0..4 {
            let model = (g >= 2).then_some("A100-SXM4-40GB");
            l.register_gpu(&registration(&format!("GPU-{g}"), if g % 2 == 1 { 3 } else { 0 }, model)).unwrap();
        }
        for op in ops {
            let before = l.snapshot();
            match op {
                Op::Allocate(o, devices) => {
                    let owner = owner_n(o);
                    match l.allocate(&owner, &devices) {
                        Ok(()) => {
                            let mut want = devices.clone();
                            want.sort();
                            want.dedup();
                            prop_assert_eq!(l.devices_of(&owner), want);
                            // Idempotent.
                            let after = l.snapshot();
                            prop_assert!(l.allocate(&owner, &devices).is_ok());
                            prop_assert_eq!(l.snapshot(), after);
                        }
                        Err(e) => {
                            prop_assert!(matches!(e, CoreError::Conflict(_) | CoreError::InvalidArgument(_)), "{}", e);
                            prop_assert_eq!(l.snapshot(), before);
                        }
                    }
                }
                Op::Release(o) => {
                    let owner = owner_n(o);
                    let held = l.devices_of(&owner);
                    prop_assert_eq!(l.release(&owner), held);
                    prop_assert!(l.devices_of(&owner).is_empty());
                    let after = l.snapshot();
                    prop_assert!(l.release(&owner).is_empty());
                    prop_assert_eq!(l.snapshot(), after);
                }
                Op::Restore => {
                    let copy = Ledger::from_snapshot(&before).unwrap();
                    prop_assert_eq!(copy.snapshot(), before.clone());
                    prop_assert_eq!(copy.holdings(), l.holdings());
                    l.restore(&before).unwrap();
                    prop_assert_eq!(l.snapshot(), before);
                }
            }
            check_invariants(&l);
        }
    }
}

#[test]
fn ledger_is_thread_safe() {
    let l = std::sync::Arc::new(Ledger::new());
    for g in 0..4 {
        l.register_gpu(&registration(&format!("GPU-{g}"), 8, None))
            .unwrap();
    }
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let l = l.clone();
            std::thread::spawn(move || {
                let mut ok = 0;
                for i in 0..500 {
                    let o = owner_n(t * 1000 + (i % 7) * 2);
                    let d = Device::replica(format!("GPU-{}", i % 4), (i % 8) as u32);
                    if l.allocate(&o, &[d]).is_ok() {
                        ok += 1;
                    }
                    if i % 3 == 0 {
                        l.release(&o);
                    }
                }
                ok
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(total > 0);
    check_invariants(&l);
}
