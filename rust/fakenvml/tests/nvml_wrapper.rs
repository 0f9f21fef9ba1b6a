//! Drive the built `libfakenvml.so` through nvml-wrapper, the NVML client gpulet-core uses,
//! exactly as the core loads it (dlopen by path). One test function: the environment and the
//! library are process-wide.

use std::ffi::{c_uint, OsStr};
use std::path::PathBuf;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::TopologyLevel;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN;
use nvml_wrapper::Nvml;

/// The cdylib cargo built next to this test binary.
fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for dir in [deps.parent().unwrap(), deps] {
        let p = dir.join("libfakenvml.so");
        if p.is_file() {
            return p;
        }
    }
    panic!("libfakenvml.so not found next to {}", exe.display());
}

const SPEC: &str = r#"
version: v1
name: wrapper-test
driver_version: "580.82.07"
numa_nodes:
  - {id: 0, cpus: "0-7"}
  - {id: 1, cpus: "8-15"}
nvswitches: 4
gpus:
  - {model: H100-80GB, pci_bus_id: "00000000:1B:00.0", numa_node: 0, mig_enabled: true,
     mig_devices: [{profile: 3g.40gb, start: 4}]}
  - {model: H100-80GB, pci_bus_id: "00000000:9D:00.0", numa_node: 1,
     processes: [{pid: 77, used_memory_mib: 2048}]}
"#;

fn control(spec: &std::path::Path, state: &std::path::Path, json: &str) {
    let lib = unsafe { libloading::Library::new(library()) }.unwrap();
    let f: libloading::Symbol<unsafe extern "C" fn(*const i8, *const i8, *const i8) -> i32> =
        unsafe { lib.get(b"gpuletFakeControl\0") }.unwrap();
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let (a, b, j) = (
        c(spec.to_str().unwrap()),
        c(state.to_str().unwrap()),
        c(json),
    );
    assert_eq!(
        unsafe { f(a.as_ptr(), b.as_ptr(), j.as_ptr()) },
        0,
        "{json}"
    );
}

#[test]
fn nvml_wrapper_reads_the_fake() {
    let dir = std::env::temp_dir().join(format!("fakenvml-wrapper-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("node.yaml");
    let state = dir.join("state.json");
    std::fs::write(&spec, SPEC).unwrap();
    std::env::set_var("GPULET_FAKE_NVML_SPEC", &spec);
    std::env::set_var("GPULET_FAKE_NVML_STATE", &state);
    let lib = library();

    let nvml = Nvml::builder().lib_path(OsStr::new(&lib)).init().unwrap();
    assert_eq!(nvml.sys_driver_version().unwrap(), "580.82.07");
    assert_eq!(nvml.device_count().unwrap(), 2);
    let a = nvml.device_by_index(0).unwrap();
    let b = nvml.device_by_index(1).unwrap();
    assert_eq!(a.name().unwrap(), "NVIDIA H100 80GB HBM3");
    assert!(a.uuid().unwrap().starts_with("GPU-"));
    let mem = b.memory_info().unwrap();
    assert_eq!(mem.total, 81559 * 1024 * 1024);
    assert_eq!(mem.used, 2048 * 1024 * 1024);
    let pci = b.pci_info().unwrap();
    assert_eq!(pci.bus_id, "00000000:9D:00.0");
    assert_eq!(pci.pci_device_id, 0x2330_10DE);
    assert_eq!(a.cuda_compute_capability().unwrap().major, 9);
    assert_eq!(
        a.topology_common_ancestor(nvml.device_by_index(1).unwrap())
            .unwrap(),
        TopologyLevel::System
    );
    assert_eq!(b.running_compute_processes().unwrap()[0].pid, 77);

    // MIG as the core reads it.
    let mode = a.mig_mode().unwrap();
    assert_eq!((mode.current, mode.pending), (1, 1));
    let info = a.profile_info(0x2).unwrap();
    assert_eq!((info.id, info.slice_count, info.instance_count), (9, 3, 2));
    assert!(matches!(a.profile_info(0x6), Err(NvmlError::NotSupported)));
    assert!(matches!(a.profile_info(0x12), Err(NvmlError::InvalidArg)));
    assert_eq!(a.mig_device_count().unwrap(), 7);
    let mig = a.mig_device_by_index(0).unwrap();
    assert!(mig.mig_is_mig_device_handle().unwrap());
    assert_eq!(mig.name().unwrap(), "NVIDIA H100 80GB HBM3 MIG 3g.40gb");
    assert!(mig.uuid().unwrap().starts_with("MIG-"));
    assert_eq!(mig.memory_info().unwrap().total, 40448 * 1024 * 1024);
    assert_eq!(
        mig.mig_parent_device().unwrap().uuid().unwrap(),
        a.uuid().unwrap()
    );
    assert!(matches!(
        b.mig_device_by_index(0),
        Err(NvmlError::NotSupported)
    ));

    // NVLinks to NVSwitches; the raw call (nvml-wrapper's remote_device_type reads back its
    // initial value rather than NVML's answer).
    let link = a.link_wrapper_for(17);
    assert!(link.is_active().unwrap());
    assert_eq!(link.remote_pci_info().unwrap().pci_device_id, 0x22A3_10DE);
    assert!(matches!(
        a.link_wrapper_for(18).is_active(),
        Err(NvmlError::InvalidArg)
    ));
    let sym = nvml
        .lib()
        .nvmlDeviceGetNvLinkRemoteDeviceType
        .as_ref()
        .unwrap();
    let mut kind: c_uint = 99;
    assert_eq!(unsafe { sym(a.handle(), 0, &mut kind) }, 0);
    assert_eq!(kind, 2, "NVML_NVLINK_DEVICE_TYPE_SWITCH");

    // Field ids: nvml-wrapper sends the NVML 13 number (269) of the canonical NVML 12 id 251
    // to a driver from 580.82; the fake answers by the same rule.
    control(
        &spec,
        &state,
        r#"{"command": "set_field", "gpu": 1, "field": 269, "value": 321}"#,
    );
    let samples = b
        .field_values_for(&[FieldId(NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN)])
        .unwrap();
    match &samples[0] {
        Ok(s) => assert_eq!(format!("{:?}", s.value), "Ok(U64(321))"),
        Err(e) => panic!("field sample failed: {e}"),
    }

    // Events from another writer of the state file.
    let set = nvml.create_event_set().unwrap();
    let set = b
        .register_events(EventTypes::CRITICAL_XID_ERROR, set)
        .unwrap();
    control(
        &spec,
        &state,
        r#"{"command": "inject_xid", "gpu": 1, "xid": 48}"#,
    );
    let ev = set.wait(10_000).unwrap();
    assert!(matches!(ev.event_data, Some(XidError::Value(48))));
    assert!(matches!(set.wait(0), Err(NvmlError::Timeout)));

    // A GPU that fell off the bus.
    control(&spec, &state, r#"{"command": "fall_off_bus", "gpu": 1}"#);
    assert!(matches!(b.power_usage(), Err(NvmlError::GpuLost)));
    assert!(matches!(
        set.wait(10_000).unwrap().event_data,
        Some(XidError::Value(79))
    ));
    drop(set);
    drop(nvml);
    let _ = std::fs::remove_dir_all(&dir);
}
