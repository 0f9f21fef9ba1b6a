//! Tests that call the exported C functions directly, as a C client would.

use std::ffi::{c_char, c_uint, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::null_mut;

use super::control::*;
use super::device::*;
use super::events::*;
use super::mig::*;
use super::system::*;
use super::topology::*;
use crate::abi::{self, sys};
use crate::runtime::{self, ENV_SPEC, ENV_STATE};

const NODE: &str = r#"
version: v1
name: ffi-test
driver_version: "580.95.05"
numa_nodes:
  - {id: 0, cpus: "0-3"}
  - {id: 1, cpus: "4-7"}
gpus:
  - {model: A100-SXM4-40GB, pci_bus_id: "00000000:07:00.0", numa_node: 0, mig_enabled: true,
     mig_devices: [{profile: 3g.20gb, start: 4}]}
  - {model: A100-SXM4-40GB, pci_bus_id: "00000000:0F:00.0", numa_node: 0}
  - {model: T4, pci_bus_id: "00000000:87:00.0", numa_node: 1,
     processes: [{pid: 4242, used_memory_mib: 1024, name: trainer}]}
nvlinks:
  - {gpus: [0, 1], links: 12}
pcie:
  - {gpus: [0, 1], level: single-switch}
"#;

/// A spec and state file in a fresh directory, with the environment pointing at them while
/// the test holds the process-wide test lock.
struct Fixture {
    dir: PathBuf,
    spec: PathBuf,
    state: PathBuf,
    _serial: parking_lot::MutexGuard<'static, ()>,
}

impl Fixture {
    fn new(tag: &str, text: &str) -> Fixture {
        let serial = runtime::testing::SERIAL.lock();
        let dir = std::env::temp_dir().join(format!("fakenvml-ffi-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let spec = dir.join("node.yaml");
        std::fs::write(&spec, text).unwrap();
        let state = dir.join("state.json");
        std::env::set_var(ENV_SPEC, &spec);
        std::env::set_var(ENV_STATE, &state);
        Fixture {
            dir,
            spec,
            state,
            _serial: serial,
        }
    }

    fn control(&self, json: &str) -> i32 {
        let spec = CString::new(self.spec.to_str().unwrap()).unwrap();
        let state = CString::new(self.state.to_str().unwrap()).unwrap();
        let cmd = CString::new(json).unwrap();
        unsafe { gpuletFakeControl(spec.as_ptr(), state.as_ptr(), cmd.as_ptr()) }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Leave the runtime uninitialised for the next test.
        unsafe { while nvmlShutdown() == abi::SUCCESS {} }
        std::env::remove_var(ENV_SPEC);
        std::env::remove_var(ENV_STATE);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(gpuletFakeLastError()) }
        .to_string_lossy()
        .into_owned()
}

fn handle(i: u32) -> sys::nvmlDevice_t {
    let mut h = null_mut();
    assert_eq!(
        unsafe { nvmlDeviceGetHandleByIndex_v2(i, &mut h) },
        abi::SUCCESS
    );
    h
}

fn string(f: impl FnOnce(*mut c_char, c_uint) -> u32) -> String {
    let mut buf = [0 as c_char; 96];
    assert_eq!(f(buf.as_mut_ptr(), 96), abi::SUCCESS);
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn calls_before_init_and_without_a_spec() {
    let _f = Fixture::new("uninit", NODE);
    let mut count = 0;
    unsafe {
        assert_eq!(nvmlDeviceGetCount_v2(&mut count), abi::ERROR_UNINITIALIZED);
        assert_eq!(nvmlShutdown(), abi::ERROR_UNINITIALIZED);
        std::env::remove_var(ENV_SPEC);
        assert_eq!(nvmlInit_v2(), abi::ERROR_DRIVER_NOT_LOADED);
        assert!(
            last_error().contains("GPULET_FAKE_NVML_SPEC is not set"),
            "{}",
            last_error()
        );
        assert_eq!(
            CStr::from_ptr(nvmlErrorString(abi::ERROR_GPU_IS_LOST))
                .to_str()
                .unwrap(),
            "GPU is lost"
        );
    }
}

#[test]
fn bad_specs_load_nothing() {
    let f = Fixture::new("bad", &NODE.replace("model: T4", "model: T5"));
    unsafe {
        assert_eq!(nvmlInitWithFlags(0), abi::ERROR_UNKNOWN);
        let e = last_error();
        assert!(e.contains("gpus[2].model: unknown GPU model \"T5\""), "{e}");
        assert!(e.contains(f.spec.to_str().unwrap()), "{e}");
        let mut count = 0;
        assert_eq!(nvmlDeviceGetCount_v2(&mut count), abi::ERROR_UNINITIALIZED);
        let spec = CString::new(f.spec.to_str().unwrap()).unwrap();
        assert_eq!(gpuletFakeValidateSpec(spec.as_ptr()), BAD_SPEC);
        assert_eq!(gpuletFakeValidateSpec(std::ptr::null()), BAD_COMMAND);
    }
    assert!(
        !f.state.exists(),
        "a refused spec must not create a state file"
    );
}

#[test]
fn init_is_refcounted_and_reads_the_spec_each_time() {
    let f = Fixture::new("refcount", NODE);
    unsafe {
        assert_eq!(nvmlInit_v2(), abi::SUCCESS);
        assert_eq!(nvmlInit(), abi::SUCCESS);
        assert_eq!(nvmlShutdown(), abi::SUCCESS);
        let mut count = 0;
        assert_eq!(nvmlDeviceGetCount_v2(&mut count), abi::SUCCESS);
        assert_eq!(count, 3);
        assert_eq!(nvmlShutdown(), abi::SUCCESS);
        assert_eq!(nvmlDeviceGetCount_v2(&mut count), abi::ERROR_UNINITIALIZED);
        // A second node in the same process.
        std::fs::write(&f.spec, NODE.replace("  - {model: T4", "  - {model: L4")).unwrap();
        assert_eq!(nvmlInit_v2(), abi::SUCCESS);
        let name = string(|b, l| nvmlDeviceGetName(handle(2), b, l));
        assert_eq!(name, "NVIDIA L4");
        assert_eq!(
            nvmlDeviceGetCount_v2(null_mut()),
            abi::ERROR_INVALID_ARGUMENT
        );
    }
}

#[test]
fn identity_memory_and_buffers() {
    let _f = Fixture::new("identity", NODE);
    unsafe {
        assert_eq!(nvmlInit_v2(), abi::SUCCESS);
        let h = handle(1);
        assert_eq!(
            string(|b, l| nvmlDeviceGetName(h, b, l)),
            "NVIDIA A100-SXM4-40GB"
        );
        let uuid = string(|b, l| nvmlDeviceGetUUID(h, b, l));
        let mut small = [0 as c_char; 8];
        assert_eq!(
            nvmlDeviceGetUUID(h, small.as_mut_ptr(), 8),
            abi::ERROR_INSUFFICIENT_SIZE
        );
        let c = CString::new(uuid.to_ascii_uppercase()).unwrap();
        let mut by_uuid = null_mut();
        assert_eq!(
            nvmlDeviceGetHandleByUUID(c.as_ptr(), &mut by_uuid),
            abi::SUCCESS
        );
        assert_eq!(by_uuid, h);
        let bus = CString::new("0000:0f:00.0").unwrap();
        let mut by_bus = null_mut();
        assert_eq!(
            nvmlDeviceGetHandleByPciBusId_v2(bus.as_ptr(), &mut by_bus),
            abi::SUCCESS
        );
        assert_eq!(by_bus, h);
        let mut pci: sys::nvmlPciInfo_t = std::mem::zeroed();
        assert_eq!(nvmlDeviceGetPciInfo_v3(h, &mut pci), abi::SUCCESS);
        assert_eq!(
            CStr::from_ptr(pci.busId.as_ptr()).to_str().unwrap(),
            "00000000:0F:00.0"
        );
        assert_eq!(pci.pciDeviceId, 0x20B0_10DE);
        let mut mem = sys::nvmlMemory_v2_t {
            version: 0,
            total: 0,
            reserved: 0,
            free: 0,
            used: 0,
        };
        assert_eq!(
            nvmlDeviceGetMemoryInfo_v2(h, &mut mem),
            abi::ERROR_ARGUMENT_VERSION_MISMATCH
        );
        mem.version = abi::MEMORY_V2;
        assert_eq!(nvmlDeviceGetMemoryInfo_v2(h, &mut mem), abi::SUCCESS);
        assert_eq!(mem.total, 40960 * 1024 * 1024);
        let t4 = handle(2);
        let mut m1: sys::nvmlMemory_t = std::mem::zeroed();
        assert_eq!(nvmlDeviceGetMemoryInfo(t4, &mut m1), abi::SUCCESS);
        assert_eq!(m1.used, 1024 * 1024 * 1024);
        assert_eq!(m1.free + m1.used, m1.total);
        let mut n = 0;
        assert_eq!(
            nvmlDeviceGetComputeRunningProcesses_v3(t4, &mut n, null_mut()),
            abi::ERROR_INSUFFICIENT_SIZE
        );
        assert_eq!(n, 1);
        let mut procs = [sys::nvmlProcessInfo_t {
            pid: 0,
            usedGpuMemory: 0,
            gpuInstanceId: 0,
            computeInstanceId: 0,
        }; 2];
        n = 2;
        assert_eq!(
            nvmlDeviceGetComputeRunningProcesses_v3(t4, &mut n, procs.as_mut_ptr()),
            abi::SUCCESS
        );
        assert_eq!(
            (n, procs[0].pid, procs[0].gpuInstanceId),
            (1, 4242, abi::NO_INSTANCE)
        );
        let name = string(|b, l| nvmlSystemGetProcessName(4242, b, l));
        assert_eq!(name, "trainer");
        assert_eq!(
            nvmlDeviceGetName(null_mut(), small.as_mut_ptr(), 8),
            abi::ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            nvmlDeviceGetName(0x1234 as sys::nvmlDevice_t, small.as_mut_ptr(), 8),
            abi::ERROR_INVALID_ARGUMENT
        );
        let mut cuda = 0;
        assert_eq!(nvmlSystemGetCudaDriverVersion_v2(&mut cuda), abi::SUCCESS);
        assert_eq!(cuda, 13000);
    }
}

#[test]
fn topology_and_nvlinks() {
    let _f = Fixture::new("topology", NODE);
    unsafe {
        assert_eq!(nvmlInit_v2(), abi::SUCCESS);
        let (a, b, t4) = (handle(0), handle(1), handle(2));
        let mut level = 0;
        assert_eq!(
            nvmlDeviceGetTopologyCommonAncestor(a, b, &mut level),
            abi::SUCCESS
        );
        assert_eq!(level, 10);
        assert_eq!(
            nvmlDeviceGetTopologyCommonAncestor(b, t4, &mut level),
            abi::SUCCESS
        );
        assert_eq!(level, 50);
        let mut active = 9;
        assert_eq!(nvmlDeviceGetNvLinkState(a, 11, &mut active), abi::SUCCESS);
        assert_eq!(active, 1);
        assert_eq!(
            nvmlDeviceGetNvLinkState(a, 12, &mut active),
            abi::ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            nvmlDeviceGetNvLinkState(t4, 0, &mut active),
            abi::ERROR_NOT_SUPPORTED
        );
        let mut kind = 9;
        assert_eq!(
            nvmlDeviceGetNvLinkRemoteDeviceType(a, 0, &mut kind),
            abi::SUCCESS
        );
        assert_eq!(kind, abi::NVLINK_DEVICE_TYPE_GPU);
        let mut pci: sys::nvmlPciInfo_t = std::mem::zeroed();
        assert_eq!(
            nvmlDeviceGetNvLinkRemotePciInfo_v2(a, 3, &mut pci),
            abi::SUCCESS
        );
        assert_eq!(
            CStr::from_ptr(pci.busId.as_ptr()).to_str().unwrap(),
            "00000000:0F:00.0"
        );
        let mut words = [0u64 as std::ffi::c_ulong; 1];
        assert_eq!(
            nvmlDeviceGetCpuAffinity(t4, 1, words.as_mut_ptr()),
            abi::SUCCESS
        );
        assert_eq!(words[0], 0xF0);
        assert_eq!(
            nvmlDeviceGetMemoryAffinity(t4, 1, words.as_mut_ptr(), 0),
            abi::SUCCESS
        );
        assert_eq!(words[0], 0b10);
        let mut node = 0;
        assert_eq!(
            nvmlDeviceGetNumaNodeId(t4, &mut node),
            abi::ERROR_NOT_SUPPORTED
        );
        let mut count = 0;
        assert_eq!(
            nvmlDeviceGetTopologyNearestGpus(a, 10, &mut count, null_mut()),
            abi::SUCCESS
        );
        assert_eq!(count, 1);
    }
}

#[test]
fn mig_lifecycle_through_the_abi() {
    let f = Fixture::new("mig", NODE);
    unsafe {
        assert_eq!(nvmlInit_v2(), abi::SUCCESS);
        let a = handle(0);
        let mut count = 0;
        assert_eq!(nvmlDeviceGetMaxMigDeviceCount(a, &mut count), abi::SUCCESS);
        assert_eq!(count, 7);
        let mut mig = null_mut();
        assert_eq!(
            nvmlDeviceGetMigDeviceHandleByIndex(a, 0, &mut mig),
            abi::SUCCESS
        );
        assert_eq!(
            nvmlDeviceGetMigDeviceHandleByIndex(a, 1, &mut mig as *mut _),
            abi::ERROR_NOT_FOUND
        );
        assert_eq!(
            nvmlDeviceGetMigDeviceHandleByIndex(a, 0, &mut mig),
            abi::SUCCESS
        );
        assert_eq!(
            string(|b, l| nvmlDeviceGetName(mig, b, l)),
            "NVIDIA A100-SXM4-40GB MIG 3g.20gb"
        );
        let mut gi_id = 0;
        assert_eq!(nvmlDeviceGetGpuInstanceId(mig, &mut gi_id), abi::SUCCESS);
        assert_eq!(gi_id, 2);
        let mut power = 0;
        assert_eq!(
            nvmlDeviceGetPowerUsage(mig, &mut power),
            abi::ERROR_NOT_SUPPORTED
        );
        let mut util: sys::nvmlUtilization_t = std::mem::zeroed();
        assert_eq!(
            nvmlDeviceGetUtilizationRates(a, &mut util),
            abi::ERROR_NOT_SUPPORTED
        );

        // Profile enums: supported, beyond the model, beyond NVML.
        let mut info: sys::nvmlGpuInstanceProfileInfo_t = std::mem::zeroed();
        assert_eq!(
            nvmlDeviceGetGpuInstanceProfileInfo(a, 0x2, &mut info),
            abi::SUCCESS
        );
        assert_eq!(
            (
                info.id,
                info.sliceCount,
                info.instanceCount,
                info.memorySizeMB
            ),
            (9, 3, 2, 20096)
        );
        assert_eq!(
            nvmlDeviceGetGpuInstanceProfileInfo(a, 0x6, &mut info),
            abi::ERROR_NOT_SUPPORTED
        );
        assert_eq!(
            nvmlDeviceGetGpuInstanceProfileInfo(a, 0x12, &mut info),
            abi::ERROR_INVALID_ARGUMENT
        );
        let mut v3: sys::nvmlGpuInstanceProfileInfo_v3_t = std::mem::zeroed();
        v3.version = abi::GI_PROFILE_INFO_V3;
        assert_eq!(
            nvmlDeviceGetGpuInstanceProfileInfoV(
                a,
                0x9,
                (&mut v3 as *mut sys::nvmlGpuInstanceProfileInfo_v3_t).cast()
            ),
            abi::SUCCESS
        );
        assert_eq!(
            CStr::from_ptr(v3.name.as_ptr()).to_str().unwrap(),
            "MIG 1g.10gb"
        );
        assert_eq!(v3.id, 15);

        // The spec's 3g.20gb sits at 4; another at 4 overlaps, at 0 fits.
        let mut gi = null_mut();
        let at4 = sys::nvmlGpuInstancePlacement_t { start: 4, size: 4 };
        assert_eq!(
            nvmlDeviceCreateGpuInstanceWithPlacement(a, 9, &at4, &mut gi),
            abi::ERROR_INSUFFICIENT_RESOURCES
        );
        assert!(
            last_error().contains("overlaps 3g.20gb at memory slices 4-7"),
            "{}",
            last_error()
        );
        let mut remaining = 0;
        assert_eq!(
            nvmlDeviceGetGpuInstanceRemainingCapacity(a, 19, &mut remaining),
            abi::SUCCESS
        );
        assert_eq!(remaining, 4);
        assert_eq!(nvmlDeviceCreateGpuInstance(a, 9, &mut gi), abi::SUCCESS);
        let mut gi_info: sys::nvmlGpuInstanceInfo_t = std::mem::zeroed();
        assert_eq!(nvmlGpuInstanceGetInfo(gi, &mut gi_info), abi::SUCCESS);
        assert_eq!(
            (gi_info.id, gi_info.placement.start, gi_info.device),
            (1, 0, a)
        );
        let mut ci = null_mut();
        assert_eq!(
            nvmlGpuInstanceCreateComputeInstance(gi, 0x0, &mut ci),
            abi::SUCCESS
        );
        let mut ci_info: sys::nvmlComputeInstanceInfo_t = std::mem::zeroed();
        assert_eq!(
            nvmlComputeInstanceGetInfo_v2(ci, &mut ci_info),
            abi::SUCCESS
        );
        assert_eq!(
            (ci_info.id, ci_info.placement.size, ci_info.gpuInstance),
            (0, 1, gi)
        );
        assert_eq!(nvmlGpuInstanceDestroy(gi), abi::ERROR_IN_USE);
        assert_eq!(nvmlComputeInstanceDestroy(ci), abi::SUCCESS);
        assert_eq!(nvmlComputeInstanceDestroy(ci), abi::ERROR_INVALID_ARGUMENT);
        assert_eq!(nvmlGpuInstanceDestroy(gi), abi::SUCCESS);

        // Non-MIG GPUs.
        let t4 = handle(2);
        let (mut cur, mut pend) = (9, 9);
        assert_eq!(
            nvmlDeviceGetMigMode(t4, &mut cur, &mut pend),
            abi::ERROR_NOT_SUPPORTED
        );
        let mut status = 0;
        assert_eq!(
            nvmlDeviceSetMigMode(handle(1), 1, &mut status),
            abi::SUCCESS
        );
        assert_eq!(
            nvmlDeviceGetMigMode(handle(1), &mut cur, &mut pend),
            abi::SUCCESS
        );
        assert_eq!((cur, pend), (1, 1));
    }
    // The state file carries it for other processes.
    let text = std::fs::read_to_string(&f.state).unwrap();
    assert!(text.contains("\"mig_enabled\":true"), "{text}");
}

#[test]
fn events_faults_and_lost_gpus() {
    let f = Fixture::new("events", NODE);
    unsafe {
        assert_eq!(nvmlInit_v2(), abi::SUCCESS);
        let b = handle(1);
        assert_eq!(
            f.control(r#"{"command": "inject_xid", "gpu": 1, "xid": 31}"#),
            OK
        );
        let mut set = null_mut();
        assert_eq!(nvmlEventSetCreate(&mut set), abi::SUCCESS);
        assert_eq!(
            nvmlDeviceRegisterEvents(b, abi::EVENT_XID, set),
            abi::SUCCESS
        );
        let mut data: sys::nvmlEventData_t = std::mem::zeroed();
        // The XID injected before registration is not delivered.
        assert_eq!(nvmlEventSetWait_v2(set, &mut data, 0), abi::ERROR_TIMEOUT);
        assert_eq!(
            f.control(r#"{"command": "inject_xid", "gpu": 1, "xid": 48}"#),
            OK
        );
        assert_eq!(nvmlEventSetWait_v2(set, &mut data, 10_000), abi::SUCCESS);
        assert_eq!(
            (data.eventType, data.eventData, data.device),
            (abi::EVENT_XID, 48, b)
        );
        assert_eq!(data.gpuInstanceId, abi::NO_INSTANCE);
        assert_eq!(nvmlEventSetWait_v2(set, &mut data, 0), abi::ERROR_TIMEOUT);

        assert_eq!(f.control(r#"{"command": "fall_off_bus", "gpu": 1}"#), OK);
        let mut temp = 0;
        assert_eq!(
            nvmlDeviceGetTemperature(b, 0, &mut temp),
            abi::ERROR_GPU_IS_LOST
        );
        let mut h = null_mut();
        assert_eq!(
            nvmlDeviceGetHandleByIndex_v2(1, &mut h),
            abi::ERROR_GPU_IS_LOST
        );
        assert_eq!(nvmlEventSetWait_v2(set, &mut data, 10_000), abi::SUCCESS);
        assert_eq!(data.eventData, 79);
        assert_eq!(f.control(r#"{"command": "restore_gpu", "gpu": 1}"#), OK);
        assert_eq!(nvmlDeviceGetTemperature(b, 0, &mut temp), abi::SUCCESS);

        assert_eq!(f.control(r#"{"command": "fail", "call": "nvmlDeviceGetTemperature", "code": 999, "gpu": 1, "times": 1}"#), OK);
        assert_eq!(
            nvmlDeviceGetTemperature(handle(0), 0, &mut temp),
            abi::SUCCESS
        );
        assert_eq!(
            nvmlDeviceGetTemperature(b, 0, &mut temp),
            abi::ERROR_UNKNOWN
        );
        assert_eq!(nvmlDeviceGetTemperature(b, 0, &mut temp), abi::SUCCESS);
        assert_eq!(
            f.control(r#"{"command": "fail", "call": "nvmlInit", "code": 9}"#),
            OK
        );
        assert_eq!(nvmlInit_v2(), abi::ERROR_DRIVER_NOT_LOADED);
        assert_eq!(f.control(r#"{"command": "clear_faults"}"#), OK);
        assert_eq!(f.control(r#"{"command": "bogus"}"#), BAD_COMMAND);
        assert!(
            last_error().contains("unknown variant `bogus`"),
            "{}",
            last_error()
        );

        let mut types = 0;
        assert_eq!(
            nvmlDeviceGetSupportedEventTypes(handle(2), &mut types),
            abi::SUCCESS
        );
        assert_eq!(types & abi::EVENT_MIG_CONFIG_CHANGE, 0);
        assert_eq!(
            nvmlDeviceRegisterEvents(handle(2), abi::EVENT_MIG_CONFIG_CHANGE, set),
            abi::ERROR_NOT_SUPPORTED
        );
        assert_eq!(nvmlEventSetFree(set), abi::SUCCESS);
        assert_eq!(nvmlEventSetFree(set), abi::ERROR_INVALID_ARGUMENT);
        assert_eq!(
            nvmlEventSetWait_v2(set, &mut data, 0),
            abi::ERROR_INVALID_ARGUMENT
        );
    }
}

#[test]
fn field_values_follow_the_driver_numbering() {
    let f = Fixture::new("fields", NODE);
    let field = |id: u32, scope: u32| sys::nvmlFieldValue_t {
        fieldId: id,
        scopeId: scope,
        timestamp: 0,
        latencyUsec: 0,
        valueType: 0,
        nvmlReturn: 0,
        value: sys::nvmlValue_t { ullVal: 0 },
    };
    unsafe {
        assert_eq!(nvmlInit_v2(), abi::SUCCESS);
        let b = handle(1);
        assert_eq!(
            f.control(r#"{"command": "set_field", "gpu": 1, "field": 269, "value": 1234}"#),
            OK
        );
        assert_eq!(
            f.control(r#"{"command": "set_metric", "gpu": 1, "name": "energy_mj", "value": 5000}"#),
            OK
        );
        // Driver 580.95 numbers fields as NVML 13: 269 is the SW thermal slowdown counter,
        // 251 power smoothing (not simulated), 300 exists, 308 does not.
        let mut values = [
            field(269, 0),
            field(251, 0),
            field(83, 0),
            field(300, 0),
            field(308, 0),
            field(165, 11),
            field(165, 12),
        ];
        assert_eq!(
            nvmlDeviceGetFieldValues(b, values.len() as i32, values.as_mut_ptr()),
            abi::SUCCESS
        );
        assert_eq!(
            (values[0].nvmlReturn, values[0].value.ullVal),
            (abi::SUCCESS, 1234)
        );
        assert_eq!(values[1].nvmlReturn, abi::ERROR_NOT_SUPPORTED);
        assert_eq!(
            (values[2].nvmlReturn, values[2].value.ullVal),
            (abi::SUCCESS, 5000)
        );
        assert_eq!(values[3].nvmlReturn, abi::ERROR_NOT_SUPPORTED);
        assert_eq!(values[4].nvmlReturn, abi::ERROR_INVALID_ARGUMENT);
        assert_eq!(
            (values[5].nvmlReturn, values[5].value.uiVal),
            (abi::SUCCESS, 1)
        );
        assert_eq!(values[6].nvmlReturn, abi::ERROR_INVALID_ARGUMENT);
        assert!(values[0].timestamp > 0);
        assert_eq!(
            nvmlDeviceGetFieldValues(b, 0, values.as_mut_ptr()),
            abi::ERROR_INVALID_ARGUMENT
        );
    }
    assert!(Path::new(&f.state).exists());
}
