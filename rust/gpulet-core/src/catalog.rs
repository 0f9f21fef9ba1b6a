//! The GPU catalog: the models gpulet knows offline, with their MIG geometry.
//!
//! At run time the real GPU is the source of truth; this catalog serves offline planning (the
//! library without a GPU), the simulated nodes of the fake NVML, and the hardware test tier,
//! which compares it with what a real driver reports.
//!
//! MIG placements are in memory slices (NVML's `nvmlGpuInstancePlacement_t`); compute slices
//! are accounted separately. Profile ids are NVML's device-unique ids (the ones `nvidia-smi mig
//! -lgip` prints), and `nvml_profile` is the `NVML_GPU_INSTANCE_PROFILE_*` enum value used to
//! query them. docs/mig-catalog.md names the upstream source of each table (NVIDIA's MIG user
//! guide, mig-parted's default config, `nvidia-smi mig -lgip`/`-lgipp` listings); where the
//! sources give no figure (SM counts of the larger Blackwell parts, exact MiB of H200/B200
//! profiles), the value is an estimate scaled from the H100 table and marked so.

use serde::Serialize;

/// NVML's `nvmlDeviceArchitecture_t` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Architecture {
    Volta = 5,
    Turing = 6,
    Ampere = 7,
    Ada = 8,
    Hopper = 9,
    Blackwell = 10,
}

impl Architecture {
    /// The lower-case family name GPU feature discovery uses (`nvidia.com/gpu.family`).
    pub fn family(self) -> &'static str {
        match self {
            Architecture::Volta => "volta",
            Architecture::Turing => "turing",
            Architecture::Ampere => "ampere",
            Architecture::Ada => "ada-lovelace",
            Architecture::Hopper => "hopper",
            Architecture::Blackwell => "blackwell",
        }
    }

    /// The NVML enum value.
    pub fn nvml_value(self) -> u32 {
        self as u32
    }
}

/// `NVML_GPU_INSTANCE_PROFILE_*` enum values.
pub mod nvml_profile {
    pub const SLICE_1: u32 = 0x0;
    pub const SLICE_2: u32 = 0x1;
    pub const SLICE_3: u32 = 0x2;
    pub const SLICE_4: u32 = 0x3;
    pub const SLICE_7: u32 = 0x4;
    pub const SLICE_8: u32 = 0x5;
    pub const SLICE_6: u32 = 0x6;
    /// 1 compute slice with all media extensions (`+me`).
    pub const SLICE_1_REV1: u32 = 0x7;
    /// 2 compute slices with media extensions (`+me`, A30).
    pub const SLICE_2_REV1: u32 = 0x8;
    /// 1 compute slice with double memory (`1g.20gb` on H100).
    pub const SLICE_1_REV2: u32 = 0x9;
    /// One past the last enum value NVML 12/13 define.
    pub const COUNT: u32 = 0x12;
}

/// One MIG GPU-instance profile: the one struct for its fields. The catalog's tables hold
/// `MigProfile` (static names and placements); what a GPU reports through NVML is
/// [`crate::nvml::MigProfileInfo`], the same struct with an owned name and placements, so the
/// two compare field for field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MigProfile<S = &'static str, P = &'static [u32]> {
    /// NVML's name, e.g. "1g.10gb" or "1g.10gb+me".
    pub name: S,
    /// Device-unique profile id (`nvmlGpuInstanceProfileInfo_t.id`, the one `nvidia-smi mig
    /// -lgip` prints).
    pub profile_id: u32,
    /// `NVML_GPU_INSTANCE_PROFILE_*` value that yields this profile.
    pub nvml_profile: u32,
    /// Compute slices (the `g` in the name; `sliceCount`).
    pub compute_slices: u32,
    /// Memory slices one instance occupies (the placement size; 0 when NVML lists no
    /// placement).
    pub memory_slices: u32,
    /// Memory of one instance in MiB (`memorySizeMB`).
    pub memory_mib: u64,
    pub multiprocessors: u32,
    pub copy_engines: u32,
    pub decoders: u32,
    pub encoders: u32,
    pub jpegs: u32,
    pub ofas: u32,
    /// Most instances of this profile on one GPU (`instanceCount`).
    pub max_instances: u32,
    /// Start memory slices where an instance may be placed, ascending.
    pub placements: P,
}

/// The domain of NVIDIA's extended resource names ("nvidia.com/gpu", "nvidia.com/mig-…").
pub const RESOURCE_NAME_PREFIX: &str = "nvidia.com";

/// The device-plugin resource suffix NVIDIA derives from a MIG profile's NVML name
/// ("1g.10gb+me" → "1g.10gb.me").
pub fn mig_resource_suffix(profile: &str) -> String {
    profile.replace('+', ".")
}

/// NVIDIA's resource name of a MIG profile under the `mixed` strategy
/// ("1g.10gb+me" → "nvidia.com/mig-1g.10gb.me").
pub fn mig_resource_name(profile: &str) -> String {
    format!(
        "{RESOURCE_NAME_PREFIX}/mig-{}",
        mig_resource_suffix(profile)
    )
}

impl<S: AsRef<str>, P> MigProfile<S, P> {
    /// See [`mig_resource_suffix`].
    pub fn resource_suffix(&self) -> String {
        mig_resource_suffix(self.name.as_ref())
    }

    /// See [`mig_resource_name`].
    pub fn resource_name(&self) -> String {
        mig_resource_name(self.name.as_ref())
    }
}

/// MIG geometry of a MIG-capable model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MigGeometry {
    pub compute_slices: u32,
    pub memory_slices: u32,
    pub max_instances: u32,
    pub profiles: &'static [MigProfile],
}

impl MigGeometry {
    pub fn profile_by_name(&self, name: &str) -> Option<&'static MigProfile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    pub fn profile_by_id(&self, profile_id: u32) -> Option<&'static MigProfile> {
        self.profiles.iter().find(|p| p.profile_id == profile_id)
    }

    pub fn profile_by_nvml_enum(&self, nvml_profile: u32) -> Option<&'static MigProfile> {
        self.profiles
            .iter()
            .find(|p| p.nvml_profile == nvml_profile)
    }
}

/// One GPU model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GpuModel {
    /// Short key, e.g. "H100-80GB".
    pub key: &'static str,
    /// NVML's product name (`nvmlDeviceGetName`).
    pub product_name: &'static str,
    /// `nvmlPciInfo_t.pciDeviceId`: device id in the high 16 bits, vendor 0x10DE in the low.
    pub pci_device_id: u32,
    /// `nvmlPciInfo_t.pciSubSystemId`.
    pub pci_subsystem_id: u32,
    /// Other names accepted by [`lookup`].
    pub aliases: &'static [&'static str],
    pub memory_mib: u64,
    pub compute_capability: (u32, u32),
    pub architecture: Architecture,
    pub multiprocessors: u32,
    /// NVLinks per GPU (0 for PCIe-only parts).
    pub nvlinks: u32,
    /// Default power limit in mW.
    pub power_limit_mw: u32,
    /// Max SM and memory clocks in MHz.
    pub max_sm_clock_mhz: u32,
    pub max_mem_clock_mhz: u32,
    pub bus_width_bits: u32,
    pub mig: Option<MigGeometry>,
}

impl GpuModel {
    /// The PCI device id alone (high 16 bits of `pci_device_id`).
    pub fn device_id(&self) -> u16 {
        (self.pci_device_id >> 16) as u16
    }

    pub fn mig_capable(&self) -> bool {
        self.mig.is_some()
    }
}

#[allow(clippy::too_many_arguments)]
const fn p(
    name: &'static str,
    profile_id: u32,
    nvml_profile: u32,
    compute_slices: u32,
    memory_slices: u32,
    memory_mib: u64,
    multiprocessors: u32,
    engines: (u32, u32, u32, u32),
    max_instances: u32,
    placements: &'static [u32],
) -> MigProfile {
    let (copy_engines, decoders, jpegs, ofas) = engines;
    MigProfile {
        name,
        profile_id,
        nvml_profile,
        compute_slices,
        memory_slices,
        memory_mib,
        multiprocessors,
        copy_engines,
        decoders,
        encoders: 0,
        jpegs,
        ofas,
        max_instances,
        placements,
    }
}

use nvml_profile as np;

const P_1: &[u32] = &[0, 1, 2, 3, 4, 5, 6];
const P_2: &[u32] = &[0, 2, 4, 6];
const P_2G: &[u32] = &[0, 2, 4];
const P_3G: &[u32] = &[0, 4];
const P_0: &[u32] = &[0];

/// The seven-profile table shared by A100-80GB, H100, H200, B200 and GB200 (names and sizes
/// differ). Engines are (copy, decoder, jpeg, ofa) per the H100 `-lgip` table.
#[allow(clippy::too_many_arguments)]
const fn hopper_like(names: [&'static str; 7], mib: [u64; 7], sms: [u32; 7]) -> [MigProfile; 7] {
    [
        p(
            names[0],
            19,
            np::SLICE_1,
            1,
            1,
            mib[0],
            sms[0],
            (1, 1, 1, 0),
            7,
            P_1,
        ),
        p(
            names[1],
            20,
            np::SLICE_1_REV1,
            1,
            1,
            mib[1],
            sms[1],
            (1, 1, 1, 1),
            1,
            P_1,
        ),
        p(
            names[2],
            15,
            np::SLICE_1_REV2,
            1,
            2,
            mib[2],
            sms[2],
            (1, 1, 1, 0),
            4,
            P_2,
        ),
        p(
            names[3],
            14,
            np::SLICE_2,
            2,
            2,
            mib[3],
            sms[3],
            (2, 2, 2, 0),
            3,
            P_2G,
        ),
        p(
            names[4],
            9,
            np::SLICE_3,
            3,
            4,
            mib[4],
            sms[4],
            (3, 3, 3, 0),
            2,
            P_3G,
        ),
        p(
            names[5],
            5,
            np::SLICE_4,
            4,
            4,
            mib[5],
            sms[5],
            (4, 4, 4, 0),
            1,
            P_0,
        ),
        p(
            names[6],
            0,
            np::SLICE_7,
            7,
            8,
            mib[6],
            sms[6],
            (8, 7, 7, 1),
            1,
            &[0],
        ),
    ]
}

const fn geometry(profiles: &'static [MigProfile]) -> MigGeometry {
    MigGeometry {
        compute_slices: 7,
        memory_slices: 8,
        max_instances: 7,
        profiles,
    }
}

static A30_PROFILES: [MigProfile; 5] = [
    p(
        "1g.6gb",
        14,
        np::SLICE_1,
        1,
        1,
        5952,
        14,
        (1, 0, 0, 0),
        4,
        &[0, 1, 2, 3],
    ),
    p(
        "1g.6gb+me",
        21,
        np::SLICE_1_REV1,
        1,
        1,
        5952,
        14,
        (1, 1, 1, 1),
        1,
        &[0, 1, 2, 3],
    ),
    p(
        "2g.12gb",
        5,
        np::SLICE_2,
        2,
        2,
        12096,
        28,
        (2, 2, 0, 0),
        2,
        &[0, 2],
    ),
    p(
        "2g.12gb+me",
        6,
        np::SLICE_2_REV1,
        2,
        2,
        12096,
        28,
        (2, 2, 1, 1),
        1,
        &[0, 2],
    ),
    p(
        "4g.24gb",
        0,
        np::SLICE_4,
        4,
        4,
        24256,
        56,
        (4, 4, 1, 1),
        1,
        &[0],
    ),
];

static A100_40_PROFILES: [MigProfile; 7] = [
    p(
        "1g.5gb",
        19,
        np::SLICE_1,
        1,
        1,
        4864,
        14,
        (1, 0, 0, 0),
        7,
        P_1,
    ),
    p(
        "1g.5gb+me",
        20,
        np::SLICE_1_REV1,
        1,
        1,
        4864,
        14,
        (1, 1, 1, 1),
        1,
        P_1,
    ),
    p(
        "1g.10gb",
        15,
        np::SLICE_1_REV2,
        1,
        2,
        9856,
        14,
        (1, 1, 0, 0),
        4,
        P_2,
    ),
    p(
        "2g.10gb",
        14,
        np::SLICE_2,
        2,
        2,
        9984,
        28,
        (2, 1, 0, 0),
        3,
        P_2G,
    ),
    p(
        "3g.20gb",
        9,
        np::SLICE_3,
        3,
        4,
        20096,
        42,
        (3, 2, 0, 0),
        2,
        P_3G,
    ),
    p(
        "4g.20gb",
        5,
        np::SLICE_4,
        4,
        4,
        20096,
        56,
        (4, 2, 0, 0),
        1,
        P_0,
    ),
    p(
        "7g.40gb",
        0,
        np::SLICE_7,
        7,
        8,
        40448,
        98,
        (7, 5, 1, 1),
        1,
        &[0],
    ),
];

static A100_80_PROFILES: [MigProfile; 7] = [
    p(
        "1g.10gb",
        19,
        np::SLICE_1,
        1,
        1,
        9728,
        14,
        (1, 0, 0, 0),
        7,
        P_1,
    ),
    p(
        "1g.10gb+me",
        20,
        np::SLICE_1_REV1,
        1,
        1,
        9728,
        14,
        (1, 1, 1, 1),
        1,
        P_1,
    ),
    p(
        "1g.20gb",
        15,
        np::SLICE_1_REV2,
        1,
        2,
        19968,
        14,
        (1, 1, 0, 0),
        4,
        P_2,
    ),
    p(
        "2g.20gb",
        14,
        np::SLICE_2,
        2,
        2,
        19968,
        28,
        (2, 1, 0, 0),
        3,
        P_2G,
    ),
    p(
        "3g.40gb",
        9,
        np::SLICE_3,
        3,
        4,
        40192,
        42,
        (3, 2, 0, 0),
        2,
        P_3G,
    ),
    p(
        "4g.40gb",
        5,
        np::SLICE_4,
        4,
        4,
        40192,
        56,
        (4, 2, 0, 0),
        1,
        P_0,
    ),
    p(
        "7g.80gb",
        0,
        np::SLICE_7,
        7,
        8,
        80640,
        98,
        (7, 5, 1, 1),
        1,
        &[0],
    ),
];

const HOPPER_SMS: [u32; 7] = [16, 16, 26, 32, 60, 64, 132];

static H100_80_PROFILES: [MigProfile; 7] = hopper_like(
    [
        "1g.10gb",
        "1g.10gb+me",
        "1g.20gb",
        "2g.20gb",
        "3g.40gb",
        "4g.40gb",
        "7g.80gb",
    ],
    [9984, 9984, 20096, 20096, 40448, 40448, 81152],
    HOPPER_SMS,
);

static H100_NVL_PROFILES: [MigProfile; 7] = hopper_like(
    [
        "1g.12gb",
        "1g.12gb+me",
        "1g.24gb",
        "2g.24gb",
        "3g.47gb",
        "4g.47gb",
        "7g.94gb",
    ],
    [12032, 12032, 24320, 24320, 47872, 47872, 95488],
    HOPPER_SMS,
);

// H200 MiB figures are estimates scaled from H100 (no published `-lgip` listing for H200).
static H200_PROFILES: [MigProfile; 7] = hopper_like(
    [
        "1g.18gb",
        "1g.18gb+me",
        "1g.35gb",
        "2g.35gb",
        "3g.71gb",
        "4g.71gb",
        "7g.141gb",
    ],
    [16896, 16896, 33792, 33792, 69376, 69376, 139520],
    HOPPER_SMS,
);

// B200 and GB200: MiB and SM counts are estimates (148 SMs in all; no published `-lgip` listing).
const BLACKWELL_SMS: [u32; 7] = [18, 18, 18, 36, 54, 72, 148];

static B200_PROFILES: [MigProfile; 7] = hopper_like(
    [
        "1g.23gb",
        "1g.23gb+me",
        "1g.45gb",
        "2g.45gb",
        "3g.90gb",
        "4g.90gb",
        "7g.180gb",
    ],
    [22528, 22528, 45056, 45056, 90112, 90112, 180224],
    BLACKWELL_SMS,
);

static GB200_PROFILES: [MigProfile; 7] = hopper_like(
    [
        "1g.23gb",
        "1g.23gb+me",
        "1g.47gb",
        "2g.47gb",
        "3g.93gb",
        "4g.93gb",
        "7g.186gb",
    ],
    [23296, 23296, 47104, 47104, 94208, 94208, 186368],
    BLACKWELL_SMS,
);

static MODELS: &[GpuModel] = &[
    GpuModel {
        key: "H100-80GB",
        product_name: "NVIDIA H100 80GB HBM3",
        pci_device_id: 0x2330_10DE,
        pci_subsystem_id: 0x16C1_10DE,
        aliases: &["H100-SXM5-80GB", "H100"],
        memory_mib: 81559,
        compute_capability: (9, 0),
        architecture: Architecture::Hopper,
        multiprocessors: 132,
        nvlinks: 18,
        power_limit_mw: 700_000,
        max_sm_clock_mhz: 1980,
        max_mem_clock_mhz: 2619,
        bus_width_bits: 5120,
        mig: Some(geometry(&H100_80_PROFILES)),
    },
    GpuModel {
        key: "H100-NVL-94GB",
        product_name: "NVIDIA H100 NVL",
        pci_device_id: 0x2321_10DE,
        pci_subsystem_id: 0x1839_10DE,
        aliases: &["H100-NVL"],
        memory_mib: 95830,
        compute_capability: (9, 0),
        architecture: Architecture::Hopper,
        multiprocessors: 132,
        nvlinks: 12,
        power_limit_mw: 400_000,
        max_sm_clock_mhz: 1785,
        max_mem_clock_mhz: 2619,
        bus_width_bits: 6144,
        mig: Some(geometry(&H100_NVL_PROFILES)),
    },
    GpuModel {
        key: "H200-141GB",
        product_name: "NVIDIA H200",
        pci_device_id: 0x2335_10DE,
        pci_subsystem_id: 0x18BE_10DE,
        aliases: &["H200", "H200-SXM5-141GB"],
        memory_mib: 143771,
        compute_capability: (9, 0),
        architecture: Architecture::Hopper,
        multiprocessors: 132,
        nvlinks: 18,
        power_limit_mw: 700_000,
        max_sm_clock_mhz: 1980,
        max_mem_clock_mhz: 3201,
        bus_width_bits: 6144,
        mig: Some(geometry(&H200_PROFILES)),
    },
    GpuModel {
        key: "A100-SXM4-80GB",
        product_name: "NVIDIA A100-SXM4-80GB",
        pci_device_id: 0x20B2_10DE,
        pci_subsystem_id: 0x1463_10DE,
        aliases: &["A100-80GB"],
        memory_mib: 81920,
        compute_capability: (8, 0),
        architecture: Architecture::Ampere,
        multiprocessors: 108,
        nvlinks: 12,
        power_limit_mw: 400_000,
        max_sm_clock_mhz: 1410,
        max_mem_clock_mhz: 1593,
        bus_width_bits: 5120,
        mig: Some(geometry(&A100_80_PROFILES)),
    },
    GpuModel {
        key: "A100-SXM4-40GB",
        product_name: "NVIDIA A100-SXM4-40GB",
        pci_device_id: 0x20B0_10DE,
        pci_subsystem_id: 0x134F_10DE,
        aliases: &["A100-40GB"],
        memory_mib: 40960,
        compute_capability: (8, 0),
        architecture: Architecture::Ampere,
        multiprocessors: 108,
        nvlinks: 12,
        power_limit_mw: 400_000,
        max_sm_clock_mhz: 1410,
        max_mem_clock_mhz: 1215,
        bus_width_bits: 5120,
        mig: Some(geometry(&A100_40_PROFILES)),
    },
    GpuModel {
        key: "A30-24GB",
        product_name: "NVIDIA A30",
        pci_device_id: 0x20B7_10DE,
        pci_subsystem_id: 0x1532_10DE,
        aliases: &["A30"],
        memory_mib: 24576,
        compute_capability: (8, 0),
        architecture: Architecture::Ampere,
        multiprocessors: 56,
        nvlinks: 4,
        power_limit_mw: 165_000,
        max_sm_clock_mhz: 1440,
        max_mem_clock_mhz: 1215,
        bus_width_bits: 3072,
        mig: Some(MigGeometry {
            compute_slices: 4,
            memory_slices: 4,
            max_instances: 4,
            profiles: &A30_PROFILES,
        }),
    },
    GpuModel {
        key: "B200-180GB",
        product_name: "NVIDIA B200",
        pci_device_id: 0x2901_10DE,
        pci_subsystem_id: 0x1999_10DE,
        aliases: &["B200"],
        memory_mib: 183359,
        compute_capability: (10, 0),
        architecture: Architecture::Blackwell,
        multiprocessors: 148,
        nvlinks: 18,
        power_limit_mw: 1_000_000,
        max_sm_clock_mhz: 1965,
        max_mem_clock_mhz: 3996,
        bus_width_bits: 8192,
        mig: Some(geometry(&B200_PROFILES)),
    },
    GpuModel {
        key: "GB200-186GB",
        product_name: "NVIDIA GB200",
        pci_device_id: 0x2941_10DE,
        pci_subsystem_id: 0x2046_10DE,
        aliases: &["GB200"],
        memory_mib: 189471,
        compute_capability: (10, 0),
        architecture: Architecture::Blackwell,
        multiprocessors: 148,
        nvlinks: 18,
        power_limit_mw: 1_200_000,
        max_sm_clock_mhz: 2062,
        max_mem_clock_mhz: 3996,
        bus_width_bits: 8192,
        mig: Some(geometry(&GB200_PROFILES)),
    },
    GpuModel {
        key: "V100-SXM2-16GB",
        product_name: "Tesla V100-SXM2-16GB",
        pci_device_id: 0x1DB1_10DE,
        pci_subsystem_id: 0x1212_10DE,
        aliases: &["V100"],
        memory_mib: 16384,
        compute_capability: (7, 0),
        architecture: Architecture::Volta,
        multiprocessors: 80,
        nvlinks: 6,
        power_limit_mw: 300_000,
        max_sm_clock_mhz: 1530,
        max_mem_clock_mhz: 877,
        bus_width_bits: 4096,
        mig: None,
    },
    GpuModel {
        key: "L4-24GB",
        product_name: "NVIDIA L4",
        pci_device_id: 0x27B8_10DE,
        pci_subsystem_id: 0x16CA_10DE,
        aliases: &["L4"],
        memory_mib: 23034,
        compute_capability: (8, 9),
        architecture: Architecture::Ada,
        multiprocessors: 58,
        nvlinks: 0,
        power_limit_mw: 72_000,
        max_sm_clock_mhz: 2040,
        max_mem_clock_mhz: 6251,
        bus_width_bits: 192,
        mig: None,
    },
    GpuModel {
        key: "T4-16GB",
        product_name: "Tesla T4",
        pci_device_id: 0x1EB8_10DE,
        pci_subsystem_id: 0x12A2_10DE,
        aliases: &["T4"],
        memory_mib: 15360,
        compute_capability: (7, 5),
        architecture: Architecture::Turing,
        multiprocessors: 40,
        nvlinks: 0,
        power_limit_mw: 70_000,
        max_sm_clock_mhz: 1590,
        max_mem_clock_mhz: 5001,
        bus_width_bits: 256,
        mig: None,
    },
];

/// Every model in the catalog.
pub fn models() -> &'static [GpuModel] {
    MODELS
}

fn normalise(s: &str) -> String {
    s.trim().to_ascii_lowercase().replace([' ', '_'], "-")
}

/// Find a model by key ("H100-80GB"), alias, NVML product name ("NVIDIA H100 80GB HBM3") or PCI
/// device id ("0x2330", "0x233010DE", "2330"). Case-insensitive.
pub fn lookup(model: &str) -> Option<&'static GpuModel> {
    let wanted = normalise(model);
    if let Some(m) = MODELS.iter().find(|m| {
        normalise(m.key) == wanted
            || normalise(m.product_name) == wanted
            || m.aliases.iter().any(|a| normalise(a) == wanted)
    }) {
        return Some(m);
    }
    let hex = wanted.trim_start_matches("0x");
    if (hex.len() == 4 || hex.len() == 8) && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let v = u32::from_str_radix(hex, 16).ok()?;
        let id = if hex.len() == 4 {
            (v << 16) | 0x10DE
        } else {
            v
        };
        return MODELS.iter().find(|m| m.pci_device_id == id);
    }
    None
}

/// The keys of every model, for error messages.
pub fn model_keys() -> Vec<&'static str> {
    MODELS.iter().map(|m| m.key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_every_name_form() {
        let h = lookup("H100-80GB").unwrap();
        assert_eq!(lookup("NVIDIA H100 80GB HBM3").unwrap().key, h.key);
        assert_eq!(lookup("0x2330").unwrap().key, h.key);
        assert_eq!(lookup("0x233010DE").unwrap().key, h.key);
        assert_eq!(lookup("h100-80gb").unwrap().key, h.key);
        assert!(lookup("H100-81GB").is_none());
        assert!(lookup("").is_none());
    }

    #[test]
    fn tables_are_consistent() {
        for m in models() {
            let Some(g) = m.mig else { continue };
            let mut ids = std::collections::HashSet::new();
            for p in g.profiles {
                assert!(
                    ids.insert(p.profile_id),
                    "{}: duplicate id {}",
                    m.key,
                    p.profile_id
                );
                assert!(p.compute_slices <= g.compute_slices);
                assert!(p.max_instances as usize <= p.placements.len() || p.max_instances == 1);
                for s in p.placements {
                    assert!(
                        s + p.memory_slices <= g.memory_slices,
                        "{} {}",
                        m.key,
                        p.name
                    );
                    assert_eq!(s % p.memory_slices, 0, "{} {} misaligned", m.key, p.name);
                }
                assert!(p.memory_mib <= m.memory_mib);
            }
        }
    }

    #[test]
    fn resource_suffix_replaces_plus() {
        let h = lookup("H100-80GB").unwrap().mig.unwrap();
        let me = h.profile_by_id(20).unwrap();
        assert_eq!(me.resource_suffix(), "1g.10gb.me");
        assert_eq!(me.resource_name(), "nvidia.com/mig-1g.10gb.me");
        assert_eq!(mig_resource_name("3g.40gb"), "nvidia.com/mig-3g.40gb");
    }
}
