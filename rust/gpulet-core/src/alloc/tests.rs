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
        mig_replicas: Vec::new(),
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
    let newer = text.replace("\"version\":2", "\"version\":3");
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
        (
            0..4usize,
            prop::sample::select(vec![(9, 4), (19, 0), (9, 0)]),
            0..3u32
        )
            .prop_map(|(g, (p, s), i)| Device::mig_replica(format!("GPU-{g}"), p, s, i)),
        (0..4usize, prop::sample::select(vec!["MIG-a", "MIG-b::0"]))
            .prop_map(|(g, id)| Device::mig_unplaced(format!("GPU-{g}"), id)),
    ]
}

/// GPUs 0-3 of the random operations: 1 and 3 shared as 3 replicas, 2 and 3 A100s with
/// 3g.20gb at 4 shared as 3 replicas and 1g.5gb at 0 as 2.
fn random_node() -> Ledger {
    let l = Ledger::new();
    for g in 0..4 {
        let model = (g >= 2).then_some("A100-SXM4-40GB");
        let mut reg = registration(&format!("GPU-{g}"), if g % 2 == 1 { 3 } else { 0 }, model);
        if g >= 2 {
            reg.mig_replicas = vec![
                MigReplicas {
                    profile_id: 19,
                    start: 0,
                    replicas: 2,
                },
                MigReplicas {
                    profile_id: 9,
                    start: 4,
                    replicas: 3,
                },
            ];
        }
        l.register_gpu(&reg).unwrap();
    }
    l
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
            let disjoint = |(p, s): (u32, u32), (q, t): (u32, u32)| {
                let (a0, a1) = span(p, s);
                let (b0, b1) = span(q, t);
                a1 <= b0 || b1 <= a0
            };
            let ok = match (a, b) {
                (Device::Replica { index: x, .. }, Device::Replica { index: y, .. }) => x != y,
                (
                    Device::MigReplica {
                        profile_id: p,
                        start: s,
                        index: x,
                        ..
                    },
                    Device::MigReplica {
                        profile_id: q,
                        start: t,
                        index: y,
                        ..
                    },
                ) => {
                    if (p, s) == (q, t) {
                        x != y
                    } else {
                        disjoint((*p, *s), (*q, *t))
                    }
                }
                (
                    Device::Mig {
                        profile_id: p,
                        start: s,
                        ..
                    }
                    | Device::MigReplica {
                        profile_id: p,
                        start: s,
                        ..
                    },
                    Device::Mig {
                        profile_id: q,
                        start: t,
                        ..
                    }
                    | Device::MigReplica {
                        profile_id: q,
                        start: t,
                        ..
                    },
                ) => disjoint((*p, *s), (*q, *t)),
                (Device::MigUnplaced { id: x, .. }, Device::MigUnplaced { id: y, .. }) => x != y,
                (Device::MigUnplaced { .. }, m) | (m, Device::MigUnplaced { .. }) => {
                    matches!(m, Device::Mig { .. } | Device::MigReplica { .. })
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
    let shared_slices: std::collections::HashSet<Device> =
        seen.keys().filter_map(Device::slice).collect();
    for slice in &shared_slices {
        let h = l.holder_of(slice).unwrap().expect("a shared slice is held");
        assert!(
            matches!(&h.kind, OwnerKind::Container { namespace, .. } if namespace == SHARED_NAMESPACE),
            "{slice} held by {h}"
        );
    }
    assert_eq!(
        u.mig_slices_held,
        seen.keys()
            .filter(|d| matches!(d, Device::Mig { .. }))
            .count()
            + shared_slices.len()
    );
    assert_eq!(
        u.mig_replicas_held,
        seen.keys()
            .filter(|d| matches!(d, Device::MigReplica { .. }))
            .count()
    );
    // Sequence numbers: unique, at most the mark; pending owners are device-plugin containers.
    let allocations = l.allocations(None);
    assert_eq!(allocations.len(), holdings.len());
    let mut seqs: Vec<u64> = allocations.iter().map(|a| a.seq).collect();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        allocations.len(),
        "sorted by unique sequence numbers"
    );
    assert!(seqs.iter().all(|&s| s >= 1 && s <= l.mark()));
    for a in &allocations {
        assert_eq!(l.devices_of(&a.owner), a.devices);
        if a.pending {
            assert_eq!(a.owner.path, Path::DevicePlugin);
        }
    }
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
        let l = random_node();
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

// ---- replicas of MIG slices, MIG devices without a placement ----

/// An A100 (GPU-2 of [`ledger`]) with 3g.20gb at 4 shared as 3 replicas.
fn shared_mig_ledger() -> Ledger {
    let l = ledger();
    let mut reg = registration("GPU-2", 0, Some("A100-SXM4-40GB"));
    reg.mig_replicas = vec![MigReplicas {
        profile_id: 9,
        start: 4,
        replicas: 3,
    }];
    l.register_gpu(&reg).unwrap();
    l
}

fn is_shared_owner(o: &Owner) -> bool {
    matches!(&o.kind, OwnerKind::Container { namespace, .. } if namespace == SHARED_NAMESPACE)
}

#[test]
fn ledger_mig_replicas_hold_their_slice_for_all_of_them() {
    let l = shared_mig_ledger();
    let slice = Device::mig("GPU-2", 9, 4);
    let r = |i| Device::mig_replica("GPU-2", 9, 4, i);
    l.allocate(&pod("a"), &[r(0)]).unwrap();
    l.allocate(&pod("b"), &[r(1), r(2)]).unwrap();
    assert_eq!(l.holder_of(&r(1)).unwrap(), Some(pod("b")));
    let shared = l.holder_of(&slice).unwrap().unwrap();
    assert!(is_shared_owner(&shared), "{shared}");
    assert_eq!(
        shared.to_string(),
        "container gpulet-shared/GPU-2/mig-9-4 via device-plugin"
    );
    // The shared owner is no holding: not listed, not counted, cannot be released.
    assert!(l.holdings().iter().all(|(o, _)| !is_shared_owner(o)));
    assert_eq!(l.utilisation().owners, 2);
    assert!(l.release(&shared).is_empty());
    let e = l.allocate(&shared, &[Device::gpu("GPU-0")]).unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
    // Each replica by one owner; the slice, the GPU and overlapping slices are taken.
    for (owner, devices, needle) in [
        (pod("c"), vec![r(1)], "is held by container default/b/main"),
        (
            claim("x"),
            vec![slice.clone()],
            "shared as replicas (replica 0 of MIG",
        ),
        (
            pod("c"),
            vec![Device::gpu("GPU-2")],
            "split into MIG slices",
        ),
        (
            pod("c"),
            vec![Device::mig("GPU-2", 0, 0)],
            "overlaps MIG slice (profile 9, start 4)",
        ),
        (
            claim("x"),
            vec![Device::mig("GPU-2", 19, 0)],
            "device-plugin path",
        ),
    ] {
        let e = l.allocate(&owner, &devices).unwrap_err();
        assert!(matches!(e, CoreError::Conflict(_)), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
    let u = &l.usage()[2];
    assert_eq!(
        (u.mig_slices_held, u.mig_replicas, u.mig_replicas_held),
        (1, 3, 3)
    );
    assert_eq!(l.utilisation().mig_replicas_held, 3);
    // The slice stays held until its last replica is released.
    l.release(&pod("b"));
    assert_eq!(l.holder_of(&slice).unwrap(), Some(shared.clone()));
    assert_eq!(
        l.free_devices(None)
            .into_iter()
            .filter(|d| matches!(d, Device::MigReplica { .. }))
            .collect::<Vec<_>>(),
        vec![r(1), r(2)]
    );
    l.release(&pod("a"));
    assert_eq!(l.holder_of(&slice).unwrap(), None);
    assert_eq!(l.utilisation().mig_slices_held, 0);
    // Held whole, the slice refuses its replicas.
    l.allocate(&pod("d"), std::slice::from_ref(&slice)).unwrap();
    let e = l.allocate(&pod("a"), &[r(0)]).unwrap_err().to_string();
    assert!(e.contains("is not free: MIG slice (profile 9, start 4) of GPU-2 is held by container default/d/main"), "{e}");
}

#[test]
fn ledger_mig_replicas_unknown_and_contradictory() {
    let l = shared_mig_ledger();
    let a = pod("a");
    for (devices, needle) in [
        (
            vec![Device::mig_replica("GPU-2", 9, 4, 3)],
            "has replicas 0 to 2",
        ),
        (vec![Device::mig_replica("GPU-2", 9, 0, 0)], "is not shared"),
        (vec![Device::mig_replica("GPU-2", 9, 2, 0)], "cannot start"),
        (
            vec![Device::mig_replica("GPU-0", 9, 4, 0)],
            "without its model",
        ),
        (
            vec![
                Device::mig("GPU-2", 9, 4),
                Device::mig_replica("GPU-2", 9, 4, 0),
            ],
            "and its replica 0",
        ),
        (
            vec![
                Device::mig("GPU-2", 19, 5),
                Device::mig_replica("GPU-2", 9, 4, 0),
            ],
            "overlap",
        ),
        (
            vec![Device::gpu("GPU-2"), Device::mig_replica("GPU-2", 9, 4, 0)],
            "whole and also",
        ),
        (
            vec![
                Device::replica("GPU-1", 0),
                Device::mig_unplaced("GPU-1", "MIG-x"),
            ],
            "not both",
        ),
        (vec![Device::mig_unplaced("GPU-1", "")], "device-plugin ID"),
    ] {
        let e = l.allocate(&a, &devices).unwrap_err();
        assert!(
            matches!(e, CoreError::InvalidArgument(_)),
            "{devices:?}: {e}"
        );
        assert!(e.to_string().contains(needle), "{e}");
    }
    assert_eq!(l.utilisation().owners, 0);
    // Registration: the slice must exist, have 1 to MAX_REPLICAS replicas, be named once.
    let mut reg = registration("GPU-9", 0, Some("A100-SXM4-40GB"));
    for (mig_replicas, needle) in [
        (vec![(9, 2, 2)], "cannot start"),
        (vec![(9, 4, 0)], "1 to 4096"),
        (vec![(9, 4, 2), (9, 4, 3)], "twice"),
    ] {
        reg.mig_replicas = mig_replicas
            .into_iter()
            .map(|(profile_id, start, replicas)| MigReplicas {
                profile_id,
                start,
                replicas,
            })
            .collect();
        let e = l.register_gpu(&reg).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
    let mut no_model = registration("GPU-9", 0, None);
    no_model.mig_replicas = vec![MigReplicas {
        profile_id: 9,
        start: 4,
        replicas: 2,
    }];
    assert!(l.register_gpu(&no_model).is_err());
    // Other replica counts while a replica is held: refused.
    l.allocate(&a, &[Device::mig_replica("GPU-2", 9, 4, 0)])
        .unwrap();
    let mut other = registration("GPU-2", 0, Some("A100-SXM4-40GB"));
    other.mig_replicas = vec![MigReplicas {
        profile_id: 9,
        start: 4,
        replicas: 5,
    }];
    assert!(matches!(
        l.register_gpu(&other),
        Err(CoreError::Conflict(_))
    ));
}

#[test]
fn ledger_mig_devices_without_a_placement() {
    let l = ledger();
    let u = |g: &str, id: &str| Device::mig_unplaced(g, id);
    l.allocate(&pod("a"), &[u("GPU-2", "MIG-a")]).unwrap();
    l.allocate(
        &pod("b"),
        &[u("GPU-2", "MIG-b::0"), Device::mig("GPU-2", 19, 0)],
    )
    .unwrap();
    assert_eq!(l.holder_of(&u("GPU-2", "MIG-a")).unwrap(), Some(pod("a")));
    assert_eq!(l.holder_of(&u("GPU-2", "MIG-c")).unwrap(), None);
    let e = l.allocate(&pod("c"), &[u("GPU-2", "MIG-a")]).unwrap_err();
    assert!(
        e.to_string()
            .contains("MIG device MIG-a of GPU-2 is held by container default/a/main"),
        "{e}"
    );
    let e = l.allocate(&pod("c"), &[Device::gpu("GPU-2")]).unwrap_err();
    assert!(e.to_string().contains("split into MIG slices"), "{e}");
    // On a GPU shared as replicas: the one excludes the other.
    l.allocate(&pod("c"), &[Device::replica("GPU-1", 0)])
        .unwrap();
    let e = l.allocate(&pod("d"), &[u("GPU-1", "MIG-z")]).unwrap_err();
    assert!(e.to_string().contains("shared as replicas"), "{e}");
    l.release(&pod("c"));
    l.allocate(&pod("d"), &[u("GPU-1", "MIG-z")]).unwrap();
    let e = l
        .allocate(&pod("c"), &[Device::replica("GPU-1", 0)])
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("MIG device MIG-z of GPU-1 is held by"),
        "{e}"
    );
    assert!(!l.free_devices(None).contains(&Device::replica("GPU-1", 0)));
    assert_eq!(l.utilisation().gpus_shared, 2);
    l.release(&pod("d"));
    assert!(l.free_devices(None).contains(&Device::gpu("GPU-1")));
}

// ---- the device plugin's pending allocations, attribution, release ----

fn gpu(i: usize) -> Device {
    Device::gpu(format!("GPU-{i}"))
}

/// Eight whole GPUs, the first two served by DRA only.
fn dp_ledger() -> Ledger {
    let l = Ledger::new();
    for g in 0..8 {
        l.register_gpu(&registration(&format!("GPU-{g}"), 0, None))
            .unwrap();
    }
    l
}

fn container(ns: &str, pod: &str) -> Owner {
    Owner::container(Path::DevicePlugin, ns, pod, "main", None)
}

const RES: &str = "nvidia.com/gpu";

#[test]
fn pending_allocations_repeats_and_sequence() {
    let l = dp_ledger();
    assert_eq!(l.mark(), 0);
    let got = l.allocate_pending(RES, vec![vec![gpu(1), gpu(0)]]).unwrap();
    let owner = pending_owner(RES, 1);
    assert_eq!(*got[0].owner, owner);
    assert_eq!(
        owner.to_string(),
        "container gpulet-pending/allocate-1/nvidia.com/gpu via device-plugin"
    );
    assert!(!got[0].repeat);
    assert_eq!(l.devices_of(&owner), vec![gpu(0), gpu(1)]);
    assert_eq!(l.mark(), 1);
    let snap = l.snapshot();
    // The same devices, or some of them: a repeat, nothing recorded.
    for again in [vec![gpu(0), gpu(1)], vec![gpu(1)]] {
        let got = l.allocate_pending(RES, vec![again]).unwrap();
        assert!(got[0].repeat);
        assert_eq!(*got[0].owner, owner);
    }
    assert_eq!(l.snapshot(), snap);
    // Some held, some free: the kubelet reassigned them; the old owner is gone.
    let got = l.allocate_pending(RES, vec![vec![gpu(1), gpu(2)]]).unwrap();
    assert_eq!(got[0].released, vec![(owner.clone(), vec![gpu(0), gpu(1)])]);
    assert_eq!(l.holder_of(&gpu(0)).unwrap(), None);
    assert_eq!(*got[0].owner, pending_owner(RES, 2));
    // Several containers in one call: in order, so a later one may take an earlier's devices.
    let got = l
        .allocate_pending(RES, vec![vec![gpu(3)], vec![gpu(4)], vec![gpu(3)]])
        .unwrap();
    assert_eq!(
        got.iter().map(|p| p.repeat).collect::<Vec<_>>(),
        vec![false, false, true]
    );
    let allocations = l.allocations(Some(Path::DevicePlugin));
    assert_eq!(
        allocations
            .iter()
            .map(|a| (a.seq, a.pending, a.devices.clone()))
            .collect::<Vec<_>>(),
        vec![
            (2, true, vec![gpu(1), gpu(2)]),
            (3, true, vec![gpu(3)]),
            (4, true, vec![gpu(4)])
        ]
    );
}

#[test]
fn pending_allocations_are_all_or_nothing() {
    let l = dp_ledger();
    l.allocate(&claim("c"), &[gpu(0)]).unwrap();
    l.allocate_pending(RES, vec![vec![gpu(1), gpu(2)]]).unwrap();
    let before = (l.snapshot(), l.mark());
    // A DRA owner's device is a conflict, not a reassignment: nothing is released, not even
    // by the earlier containers of the call.
    for requests in [
        vec![vec![gpu(2), gpu(0)]],
        vec![vec![gpu(2), gpu(3)], vec![gpu(0)]],
        vec![vec![gpu(3)], vec![gpu(9)]],
        vec![vec![gpu(3)], vec![]],
    ] {
        let e = l.allocate_pending(RES, requests.clone()).unwrap_err();
        assert!(
            matches!(e, CoreError::Conflict(_) | CoreError::InvalidArgument(_)),
            "{e}"
        );
        assert_eq!((l.snapshot(), l.mark()), before, "{requests:?}");
    }
    let e = l
        .allocate_pending(RES, vec![vec![gpu(0)]])
        .unwrap_err()
        .to_string();
    assert!(e.contains("GPU-0 is held by claim c via dra"), "{e}");
    assert!(l.allocate_pending("", vec![vec![gpu(3)]]).is_err());
    // An attributed device-plugin owner is released like a pending one.
    let listed = vec![(container("ns", "x"), vec![gpu(1), gpu(2)])];
    l.reconcile(listed, l.mark()).unwrap();
    let got = l.allocate_pending(RES, vec![vec![gpu(2)]]).unwrap();
    assert!(
        !got[0].repeat,
        "devices of an attributed owner are no repeat"
    );
    assert_eq!(
        got[0].released,
        vec![(container("ns", "x"), vec![gpu(1), gpu(2)])]
    );
}

#[test]
fn reconcile_attributes_releases_and_keeps_newer() {
    let l = dp_ledger();
    l.allocate_pending(RES, vec![vec![gpu(1), gpu(2)]]).unwrap();
    l.allocate_pending(RES, vec![vec![gpu(3)]]).unwrap(); // an init container, never listed
    let mark = l.mark();
    l.allocate_pending(RES, vec![vec![gpu(4)]]).unwrap(); // after the List was asked for
    let train = container("ns", "train");
    let r = l
        .reconcile(vec![(train.clone(), vec![gpu(2), gpu(1)])], mark)
        .unwrap();
    assert_eq!(r.attributed, vec![(train.clone(), vec![gpu(1), gpu(2)])]);
    assert_eq!(r.released, vec![(pending_owner(RES, 2), vec![gpu(3)])]);
    assert!(r.conflicts.is_empty() && r.reassigned.is_empty());
    assert_eq!(l.holder_of(&gpu(1)).unwrap(), Some(train.clone()));
    assert_eq!(l.holder_of(&gpu(4)).unwrap(), Some(pending_owner(RES, 3)));
    let a = l.allocations(Some(Path::DevicePlugin));
    assert_eq!(
        a.iter()
            .map(|a| (a.owner.clone(), a.pending))
            .collect::<Vec<_>>(),
        vec![(pending_owner(RES, 3), true), (train.clone(), false)]
    );
    // The same list again: nothing moves. A list that names a newer pending owner's device:
    // kept for the pending owner.
    let r = l
        .reconcile(
            vec![
                (train.clone(), vec![gpu(1), gpu(2)]),
                (container("ns", "y"), vec![gpu(4)]),
            ],
            mark,
        )
        .unwrap();
    assert_eq!(r, Reconciliation::default());
    // Devices of a listed container changed: it is given the new ones.
    let r = l
        .reconcile(vec![(train.clone(), vec![gpu(1)])], l.mark())
        .unwrap();
    assert_eq!(r.attributed, vec![(train.clone(), vec![gpu(1)])]);
    assert_eq!(r.released, vec![(pending_owner(RES, 3), vec![gpu(4)])]);
    assert_eq!(l.holder_of(&gpu(2)).unwrap(), None);
    // Two listed containers name one device: the later by name takes it.
    let r = l
        .reconcile(
            vec![
                (container("ns", "b"), vec![gpu(6)]),
                (container("ns", "a"), vec![gpu(6)]),
                (train.clone(), vec![gpu(1)]),
            ],
            l.mark(),
        )
        .unwrap();
    assert_eq!(r.reassigned, vec![(container("ns", "a"), vec![gpu(6)])]);
    assert_eq!(l.holder_of(&gpu(6)).unwrap(), Some(container("ns", "b")));
    // The pods are gone.
    let r = l.reconcile(Vec::new(), l.mark()).unwrap();
    assert_eq!(r.released.len(), 2);
    assert!(l.allocations(None).is_empty());
}

#[test]
fn reconcile_reports_conflicts_and_refuses_bad_lists() {
    let l = dp_ledger();
    l.allocate(&claim("c9"), &[gpu(0)]).unwrap();
    l.allocate_pending(RES, vec![vec![gpu(1)]]).unwrap();
    let r = l
        .reconcile(
            vec![
                (container("ns", "p"), vec![gpu(0), gpu(2)]),
                (container("ns", "q"), vec![gpu(1)]),
                (container("ns", "r"), vec![gpu(9)]),
            ],
            l.mark(),
        )
        .unwrap();
    assert_eq!(r.attributed, vec![(container("ns", "q"), vec![gpu(1)])]);
    assert_eq!(r.conflicts.len(), 2);
    assert!(
        r.conflicts[0].2.to_string().contains("claim c9"),
        "{}",
        r.conflicts[0].2
    );
    assert!(matches!(r.conflicts[1].2, CoreError::InvalidArgument(_)));
    assert_eq!(
        l.holder_of(&gpu(2)).unwrap(),
        None,
        "a conflict changes nothing for it"
    );
    let before = l.snapshot();
    for listed in [
        vec![(claim("x"), vec![gpu(3)])],
        vec![(container("", "p"), vec![gpu(3)])],
    ] {
        assert!(matches!(
            l.reconcile(listed, l.mark()),
            Err(CoreError::InvalidArgument(_))
        ));
        assert_eq!(l.snapshot(), before);
    }
    // DRA owners are never touched.
    l.reconcile(Vec::new(), l.mark()).unwrap();
    assert_eq!(l.holder_of(&gpu(0)).unwrap(), Some(claim("c9")));
    assert_eq!(l.release_path(Path::Dra), vec![(claim("c9"), vec![gpu(0)])]);
    assert_eq!(l.utilisation().owners, 0);
}

#[test]
fn pending_mig_replicas_are_repeats_and_reassignments_too() {
    let l = shared_mig_ledger();
    let r = |i| Device::mig_replica("GPU-2", 9, 4, i);
    l.allocate_pending("nvidia.com/mig-3g.20gb", vec![vec![r(0)], vec![r(1)]])
        .unwrap();
    let shared = l.holder_of(&Device::mig("GPU-2", 9, 4)).unwrap().unwrap();
    assert!(is_shared_owner(&shared));
    assert!(
        l.allocate_pending("nvidia.com/mig-3g.20gb", vec![vec![r(1)]])
            .unwrap()[0]
            .repeat
    );
    let r1 = container("ns", "p");
    l.reconcile(vec![(r1.clone(), vec![r(1)])], l.mark())
        .unwrap();
    assert_eq!(
        l.holder_of(&Device::mig("GPU-2", 9, 4)).unwrap(),
        Some(shared)
    );
    assert_eq!(
        l.held_per_gpu(&[r(0), r(1), r(2), gpu(0)], Some(Path::DevicePlugin)),
        vec![("GPU-2".to_string(), 1)]
    );
    assert!(l.held_per_gpu(&[r(1)], Some(Path::Dra)).is_empty());
    l.reconcile(Vec::new(), l.mark()).unwrap();
    assert_eq!(l.holder_of(&Device::mig("GPU-2", 9, 4)).unwrap(), None);
    assert!(l.held_per_gpu(&[r(0), r(1), r(2)], None).is_empty());
}

#[test]
fn release_path_and_allocations_by_path() {
    let l = dp_ledger();
    l.allocate(&claim("c"), &[gpu(0)]).unwrap();
    l.allocate_pending(RES, vec![vec![gpu(1)], vec![gpu(2)]])
        .unwrap();
    assert_eq!(
        l.allocations(None)
            .iter()
            .map(|a| a.seq)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(l.allocations(Some(Path::Dra)).len(), 1);
    let released = l.release_path(Path::DevicePlugin);
    assert_eq!(released.len(), 2);
    assert_eq!(l.allocations(None).len(), 1);
    assert!(l.release_path(Path::DevicePlugin).is_empty());
}

// ---- snapshots: version 2 carries the sequence, version 1 still loads ----

#[test]
fn snapshot_carries_sequence_pending_and_mig_replicas() {
    let l = shared_mig_ledger();
    l.allocate_pending(RES, vec![vec![Device::gpu("GPU-0")]])
        .unwrap();
    l.allocate_pending(
        "nvidia.com/mig-3g.20gb",
        vec![vec![Device::mig_replica("GPU-2", 9, 4, 2)]],
    )
    .unwrap();
    l.allocate(&pod("u"), &[Device::mig_unplaced("GPU-2", "MIG-u")])
        .unwrap();
    let snap = l.snapshot();
    let back = Ledger::from_snapshot(&snap).unwrap();
    assert_eq!(back.snapshot(), snap);
    assert_eq!(back.allocations(None), l.allocations(None));
    assert_eq!(back.mark(), 3);
    assert_eq!(back.usage(), l.usage());
    assert_eq!(back.gpus(), l.gpus());
    let body: serde_json::Value = serde_json::from_slice(&snap).unwrap();
    assert_eq!(body["version"], 2);
    assert_eq!(body["body"]["seq"], 3);
    assert_eq!(body["body"]["gpus"][2]["mig_replicas"][0]["replicas"], 3);
    assert!(body["body"]["gpus"][0].get("mig_replicas").is_none());
    let pending: Vec<bool> = body["body"]["holdings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["pending"].as_bool().unwrap())
        .collect();
    // By owner: default/u, then the two pending owners.
    assert_eq!(pending, vec![false, true, true]);
    // Inconsistent sequence numbers and pending claims: refused clearly, nothing changed.
    l.allocate(&claim("c"), &[Device::replica("GPU-1", 0)])
        .unwrap();
    let good: serde_json::Value = serde_json::from_slice(&l.snapshot()).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        f(&mut v["body"]);
        serde_json::to_vec(&v).unwrap()
    };
    let fresh = Ledger::new();
    for (bad, needle) in [
        (edit(&|b| b["seq"] = 2.into()), "sequence number"),
        (
            edit(&|b| b["holdings"][0]["seq"] = 1.into()),
            "sequence number",
        ),
        (
            edit(&|b| b["holdings"][1]["seq"] = 0.into()),
            "sequence number",
        ),
        (
            edit(&|b| b["holdings"][3]["pending"] = true.into()),
            "only device-plugin",
        ),
        (
            edit(&|b| b["gpus"][2]["mig_replicas"][0]["replicas"] = 2.into()),
            "has replicas 0 to 1",
        ),
    ] {
        let e = fresh.restore(&bad).unwrap_err();
        assert!(matches!(e, CoreError::Snapshot(_)), "{e}");
        assert!(e.to_string().contains(needle), "{needle}: {e}");
        assert_eq!(fresh.utilisation().gpus, 0);
    }
}

#[test]
fn snapshot_of_version_1_loads_or_is_refused_clearly() {
    let v1 = serde_json::json!({
        "schema": "gpulet.ledger",
        "version": 1,
        "body": {
            "gpus": [
                {"uuid": "GPU-0", "replicas": 2, "model": null, "serves": null},
                {"uuid": "GPU-1", "replicas": 0, "model": "A100-SXM4-40GB", "serves": "dra"}
            ],
            "holdings": [
                {"owner": {"kind": "container", "path": "device-plugin", "namespace": "gpulet-pending",
                           "pod": "allocate-4", "container": "nvidia.com/gpu", "pod_uid": null},
                 "devices": [{"kind": "replica", "uuid": "GPU-0", "index": 1}]},
                {"owner": {"kind": "claim", "path": "dra", "uid": "c1"},
                 "devices": [{"kind": "mig", "parent": "GPU-1", "profile_id": 9, "start": 0}]}
            ]
        }
    });
    let l = Ledger::from_snapshot(&serde_json::to_vec(&v1).unwrap()).unwrap();
    let a = l.allocations(None);
    assert_eq!(
        a.iter().map(|a| (a.seq, a.pending)).collect::<Vec<_>>(),
        vec![(1, false), (2, false)]
    );
    assert_eq!(l.mark(), 2);
    assert_eq!(
        l.holder_of(&Device::mig("GPU-1", 9, 0)).unwrap(),
        Some(claim("c1"))
    );
    // Written back as version 2, and the next allocation follows the sequence.
    l.allocate_pending(RES, vec![vec![Device::replica("GPU-0", 0)]])
        .unwrap();
    assert_eq!(l.mark(), 3);
    let again: serde_json::Value = serde_json::from_slice(&l.snapshot()).unwrap();
    assert_eq!(again["version"], 2);
    // Version 1's shared owner of MIG slices: who held each replica was not recorded.
    let mut shared = v1.clone();
    shared["body"]["holdings"][1]["owner"] = serde_json::json!({
        "kind": "container", "path": "dra", "namespace": "gpulet-shared", "pod": "MIG-x",
        "container": "replicas", "pod_uid": null});
    let e = Ledger::from_snapshot(&serde_json::to_vec(&shared).unwrap()).unwrap_err();
    assert!(matches!(e, CoreError::Snapshot(_)), "{e}");
    assert!(
        e.to_string()
            .contains("did not record who holds each replica"),
        "{e}"
    );
    // A version 2 body under a version 1 envelope, and the reverse: malformed.
    let mut mixed = v1.clone();
    mixed["body"]["seq"] = serde_json::json!(2);
    let e = Ledger::from_snapshot(&serde_json::to_vec(&mixed).unwrap()).unwrap_err();
    assert!(e.to_string().contains("version 1"), "{e}");
    let mut mixed = v1;
    mixed["version"] = serde_json::json!(2);
    let e = Ledger::from_snapshot(&serde_json::to_vec(&mixed).unwrap()).unwrap_err();
    assert!(e.to_string().contains("malformed"), "{e}");
}

// ---- the device plugin's operations against a model of the rules they replace ----

/// The device plugin's bookkeeping as it was kept in Python before the ledger held it (one
/// holder per device, device-plugin owners only), with the ledger's numbering: every recorded
/// allocation takes the next sequence number. Devices held by DRA are fixed.
#[derive(Clone, Debug, Default)]
struct Model {
    seq: u64,
    holdings: std::collections::BTreeMap<Owner, (std::collections::BTreeSet<Device>, u64, bool)>,
    dra: std::collections::BTreeSet<Device>,
}

impl Model {
    fn holder(&self, d: &Device) -> Option<&Owner> {
        self.holdings
            .iter()
            .find(|(_, (ds, _, _))| ds.contains(d))
            .map(|(o, _)| o)
    }

    fn release_holders(&mut self, devices: &std::collections::BTreeSet<Device>) {
        self.holdings
            .retain(|_, (ds, _, _)| ds.is_disjoint(devices));
    }

    fn allocate_pending(&mut self, resource: &str, requests: &[Vec<Device>]) -> bool {
        let saved = self.clone();
        for r in requests {
            let devices: std::collections::BTreeSet<Device> = r.iter().cloned().collect();
            let holders: std::collections::BTreeSet<Option<&Owner>> =
                devices.iter().map(|d| self.holder(d)).collect();
            if let [Some(h)] = holders.into_iter().collect::<Vec<_>>()[..] {
                if self.holdings[h].2 {
                    continue;
                }
            }
            if devices.iter().any(|d| self.dra.contains(d)) {
                *self = saved;
                return false;
            }
            self.release_holders(&devices);
            self.seq += 1;
            self.holdings
                .insert(pending_owner(resource, self.seq), (devices, self.seq, true));
        }
        true
    }

    /// (attributed, released, conflicts).
    fn reconcile(&mut self, listed: &[(Owner, Vec<Device>)], mark: u64) -> (usize, usize, usize) {
        let mut desired: std::collections::BTreeMap<Owner, std::collections::BTreeSet<Device>> =
            std::collections::BTreeMap::new();
        for (o, ds) in listed {
            desired
                .entry(o.clone())
                .or_default()
                .extend(ds.iter().cloned());
        }
        let (mut attributed, mut released, mut conflicts) = (0, 0, 0);
        let mut kept = std::collections::BTreeSet::new();
        for (owner, (ds, seq, pending)) in self.holdings.clone() {
            if pending {
                if seq > mark {
                    kept.extend(ds);
                    continue;
                }
                self.holdings.remove(&owner);
                if !desired.values().any(|w| !w.is_disjoint(&ds)) {
                    released += 1;
                }
            } else if desired.get(&owner) != Some(&ds) {
                self.holdings.remove(&owner);
                if !desired.contains_key(&owner) {
                    released += 1;
                }
            }
        }
        let mut order: Vec<(&Owner, &std::collections::BTreeSet<Device>)> =
            desired.iter().collect();
        order.sort_by_key(|(o, _)| o.to_string());
        for (owner, ds) in order {
            let ds: std::collections::BTreeSet<Device> = ds.difference(&kept).cloned().collect();
            if ds.is_empty() || self.holdings.contains_key(owner) {
                continue;
            }
            if ds.iter().any(|d| self.dra.contains(d)) {
                conflicts += 1;
                continue;
            }
            self.release_holders(&ds);
            self.seq += 1;
            self.holdings.insert(owner.clone(), (ds, self.seq, false));
            attributed += 1;
        }
        (attributed, released, conflicts)
    }

    fn allocations(&self) -> Vec<(Owner, Vec<Device>, u64, bool)> {
        let mut v: Vec<_> = self
            .holdings
            .iter()
            .map(|(o, (ds, seq, p))| (o.clone(), ds.iter().cloned().collect(), *seq, *p))
            .collect();
        v.sort_by_key(|a| a.2);
        v
    }
}

/// The devices of the model's node: whole GPUs 0-3 (GPU-0 held by DRA), replicas of GPU-4,
/// replicas of a 3g.20gb slice of GPU-5 (an A100), MIG devices of GPU-6 without a placement.
fn model_devices() -> Vec<Device> {
    let mut v: Vec<Device> = (0..4).map(gpu).collect();
    v.extend((0..3).map(|i| Device::replica("GPU-4", i)));
    v.extend((0..3).map(|i| Device::mig_replica("GPU-5", 9, 4, i)));
    v.extend(["MIG-a", "MIG-b"].map(|id| Device::mig_unplaced("GPU-6", id)));
    v
}

fn model_ledger() -> Ledger {
    let l = Ledger::new();
    for g in 0..4 {
        l.register_gpu(&registration(&format!("GPU-{g}"), 0, None))
            .unwrap();
    }
    l.register_gpu(&registration("GPU-4", 3, None)).unwrap();
    let mut a100 = registration("GPU-5", 0, Some("A100-SXM4-40GB"));
    a100.mig_replicas = vec![MigReplicas {
        profile_id: 9,
        start: 4,
        replicas: 3,
    }];
    l.register_gpu(&a100).unwrap();
    l.register_gpu(&registration("GPU-6", 0, Some("A100-SXM4-40GB")))
        .unwrap();
    l.allocate(&claim("dra"), &[gpu(0)]).unwrap();
    l
}

#[derive(Clone, Debug)]
enum DpOp {
    Allocate(usize, Vec<Vec<usize>>),
    /// The list (pod index, device indices) and how many allocations before the latest the
    /// mark is.
    Reconcile(Vec<(usize, Vec<usize>)>, u64),
    Restore,
}

fn arb_dp_op() -> impl Strategy<Value = DpOp> {
    let devices = || prop::collection::vec(0..11usize, 1..4);
    prop_oneof![
        6 => (0..2usize, prop::collection::vec(devices(), 1..3)).prop_map(|(r, q)| DpOp::Allocate(r, q)),
        3 => (prop::collection::vec((0..4usize, devices()), 0..4), 0..3u64).prop_map(|(l, k)| DpOp::Reconcile(l, k)),
        1 => Just(DpOp::Restore),
    ]
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn device_plugin_operations_follow_the_model(ops in prop::collection::vec(arb_dp_op(), 1..30)) {
        let pool = model_devices();
        let l = model_ledger();
        let mut m = Model { dra: [gpu(0)].into(), seq: l.mark(), ..Model::default() };
        let resources = ["nvidia.com/gpu", "nvidia.com/mig-3g.20gb"];
        for op in ops {
            match op {
                DpOp::Allocate(r, requests) => {
                    let requests: Vec<Vec<Device>> = requests
                        .iter()
                        .map(|q| q.iter().map(|&i| pool[i].clone()).collect())
                        .collect();
                    let before = l.snapshot();
                    let ok = l.allocate_pending(resources[r], requests.clone()).is_ok();
                    prop_assert_eq!(ok, m.allocate_pending(resources[r], &requests), "{:?}", requests);
                    if !ok {
                        prop_assert_eq!(l.snapshot(), before);
                    }
                }
                DpOp::Reconcile(listed, back) => {
                    let listed: Vec<(Owner, Vec<Device>)> = listed
                        .iter()
                        .map(|(p, ds)| (container("ns", &format!("pod-{p}")), ds.iter().map(|&i| pool[i].clone()).collect()))
                        .collect();
                    let mark = l.mark().saturating_sub(back);
                    let r = l.reconcile(listed.clone(), mark).unwrap();
                    prop_assert_eq!(
                        (r.attributed.len(), r.released.len(), r.conflicts.len()),
                        m.reconcile(&listed, mark)
                    );
                    for (_, _, e) in &r.conflicts {
                        prop_assert!(e.to_string().contains("claim dra"), "{}", e);
                    }
                }
                DpOp::Restore => {
                    let snap = l.snapshot();
                    l.restore(&snap).unwrap();
                    prop_assert_eq!(l.snapshot(), snap);
                }
            }
            let got: Vec<_> = l
                .allocations(Some(Path::DevicePlugin))
                .into_iter()
                .map(|a| (a.owner, a.devices, a.seq, a.pending))
                .collect();
            prop_assert_eq!(got, m.allocations());
            prop_assert_eq!(l.mark(), m.seq);
            check_invariants(&l);
        }
    }
}
