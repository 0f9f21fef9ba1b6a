//! `nvmlDeviceGetFieldValues`: the field ids the fake answers, their value types, and the
//! NVML 12 / 13 numbering of ids 251-273.
//!
//! Internally every field id is kept in NVML 12 numbering ("canonical"); ids that exist only
//! in NVML 13 (274 and up) keep their number. A client's id is translated according to the
//! simulated driver: drivers from 580.82 on (CUDA 13.0 Update 1) use the NVML 13 numbering.

use serde::{Deserialize, Serialize};

use crate::abi::{sys, Ret, ERROR_INVALID_ARGUMENT, ERROR_NOT_SUPPORTED};
use crate::spec::{GpuSpec, LinkEnd};
use crate::state::GpuState;
use gpulet_core::catalog::Architecture;

/// Which numbering the simulated driver uses for field ids 251-273.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldScheme {
    /// Drivers before 580.82: 251-255 clock-event reasons / power sync, 256-273 power smoothing.
    V12,
    /// Drivers from 580.82: 251-268 power smoothing, 269-273 clock-event reasons / power sync.
    V13,
}

impl FieldScheme {
    pub fn for_driver(major: u32, minor: u32) -> FieldScheme {
        if major > 580 || (major == 580 && minor >= 82) {
            FieldScheme::V13
        } else {
            FieldScheme::V12
        }
    }

    /// `NVML_FI_MAX`: one past the largest field id this driver knows.
    pub fn max(self) -> u32 {
        match self {
            FieldScheme::V12 => 274,
            FieldScheme::V13 => 308,
        }
    }

    /// A client's field id → canonical (NVML 12) id; `None` if the driver does not know it.
    pub fn to_canonical(self, id: u32) -> Option<u32> {
        if id >= self.max() {
            return None;
        }
        Some(match (self, id) {
            (FieldScheme::V13, 251..=268) => id + 5,
            (FieldScheme::V13, 269..=273) => id - 18,
            _ => id,
        })
    }

    /// Canonical id → the id this driver's clients use.
    pub fn from_canonical(self, id: u32) -> u32 {
        match (self, id) {
            (FieldScheme::V13, 251..=255) => id + 18,
            (FieldScheme::V13, 256..=273) => id - 5,
            _ => id,
        }
    }
}

/// `nvmlValueType_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    Double,
    UnsignedInt,
    UnsignedLong,
    UnsignedLongLong,
    SignedLongLong,
    SignedInt,
    UnsignedShort,
}

impl ValueType {
    pub fn nvml_value(self) -> sys::nvmlValueType_t {
        match self {
            ValueType::Double => sys::nvmlValueType_enum_NVML_VALUE_TYPE_DOUBLE,
            ValueType::UnsignedInt => sys::nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_INT,
            ValueType::UnsignedLong => sys::nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG,
            ValueType::UnsignedLongLong => {
                sys::nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
            }
            ValueType::SignedLongLong => sys::nvmlValueType_enum_NVML_VALUE_TYPE_SIGNED_LONG_LONG,
            ValueType::SignedInt => sys::nvmlValueType_enum_NVML_VALUE_TYPE_SIGNED_INT,
            ValueType::UnsignedShort => sys::nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_SHORT,
        }
    }
}

/// A number as JSON carries it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::U(v) => v as f64,
            Num::I(v) => v as f64,
            Num::F(v) => v,
        }
    }

    fn as_u64(self) -> u64 {
        match self {
            Num::U(v) => v,
            Num::I(v) => v.max(0) as u64,
            Num::F(v) => v.max(0.0) as u64,
        }
    }

    fn as_i64(self) -> i64 {
        match self {
            Num::U(v) => i64::try_from(v).unwrap_or(i64::MAX),
            Num::I(v) => v,
            Num::F(v) => v as i64,
        }
    }

    /// Encode into NVML's value union (the bytes the type does not use are zero).
    pub fn encode(self, ty: ValueType) -> sys::nvmlValue_t {
        let mut v = sys::nvmlValue_t { ullVal: 0 };
        match ty {
            ValueType::Double => v.dVal = self.as_f64(),
            ValueType::UnsignedInt => v.uiVal = self.as_u64().min(u64::from(u32::MAX)) as u32,
            ValueType::UnsignedLong => v.ulVal = self.as_u64() as std::ffi::c_ulong,
            ValueType::UnsignedLongLong => v.ullVal = self.as_u64(),
            ValueType::SignedLongLong => v.sllVal = self.as_i64(),
            ValueType::SignedInt => {
                v.siVal =
                    self.as_i64()
                        .clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
            }
            ValueType::UnsignedShort => v.usVal = self.as_u64().min(u64::from(u16::MAX)) as u16,
        }
        v
    }
}

/// A value set by the control interface for one field (and optionally one scope).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FieldOverride {
    pub value: Num,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_type: Option<ValueType>,
}

/// Key of an override in the state file: the canonical id, plus ":scope" when scoped.
pub fn override_key(canonical: u32, scope: Option<u32>) -> String {
    match scope {
        Some(s) => format!("{canonical}:{s}"),
        None => canonical.to_string(),
    }
}

/// Where a field's value comes from.
pub struct FieldContext<'a> {
    pub gpu: &'a GpuSpec,
    pub state: &'a GpuState,
    pub links: &'a [LinkEnd],
    pub nvswitch: bool,
}

/// Per-link NVLink data rate in MB/s by architecture (approximate; the fake only needs a
/// plausible constant).
pub fn nvlink_speed_mbps(arch: Architecture) -> u32 {
    match arch {
        Architecture::Volta | Architecture::Ampere => 25_781,
        Architecture::Hopper => 26_562,
        Architecture::Blackwell => 53_125,
        Architecture::Turing | Architecture::Ada => 0,
    }
}

/// `nvmlNvlinkVersion_t` by architecture.
pub fn nvlink_version(arch: Architecture) -> u32 {
    match arch {
        Architecture::Volta => sys::nvmlNvlinkVersion_enum_NVML_NVLINK_VERSION_2_0,
        Architecture::Ampere => sys::nvmlNvlinkVersion_enum_NVML_NVLINK_VERSION_3_0,
        Architecture::Hopper => sys::nvmlNvlinkVersion_enum_NVML_NVLINK_VERSION_4_0,
        Architecture::Blackwell => sys::nvmlNvlinkVersion_enum_NVML_NVLINK_VERSION_5_0,
        Architecture::Turing | Architecture::Ada => {
            sys::nvmlNvlinkVersion_enum_NVML_NVLINK_VERSION_INVALID
        }
    }
}

/// Whether the model has HBM (memory temperature, row remapping).
pub fn has_hbm(arch: Architecture) -> bool {
    !matches!(arch, Architecture::Turing | Architecture::Ada)
}

/// The NVLink lane a per-lane field id names (L0-L11), if it is one.
fn nvlink_lane(id: u32) -> Option<u32> {
    match id {
        // CRC flit, CRC data, replay, recovery, bandwidth C0, bandwidth C1: L0-L5 then TOTAL.
        32..=73 => {
            let k = (id - 32) % 7;
            (k < 6).then_some(k)
        }
        84..=89 => Some(id - 84),
        // The same six families for L6-L11.
        96..=131 => Some(6 + (id - 96) % 6),
        132..=137 => Some(6 + id - 132),
        148..=159 => Some(id - 148),
        _ => None,
    }
}

fn uint(v: u64) -> (ValueType, Num) {
    (ValueType::UnsignedInt, Num::U(v))
}

fn ull(v: u64) -> (ValueType, Num) {
    (ValueType::UnsignedLongLong, Num::U(v))
}

/// The value type a field has when nothing overrides it.
fn natural_type(id: u32) -> ValueType {
    match id {
        1
        | 2
        | 82
        | 84..=91
        | 94
        | 95
        | 132..=137
        | 142..=147
        | 164..=168
        | 185..=190
        | 192..=196
        | 199 => ValueType::UnsignedInt,
        _ => ValueType::UnsignedLongLong,
    }
}

/// The value of a canonical field id with nothing overriding it.
fn default_value(id: u32, scope: u32, cx: &FieldContext<'_>) -> Result<(ValueType, Num), Ret> {
    let m = &cx.state.metrics;
    let model = cx.gpu.model;
    let nvlinks = cx.links.len() as u32;
    let active = |link: u32| {
        cx.links
            .get(link as usize)
            .is_some_and(|e| *e != LinkEnd::Inactive)
    };
    if let Some(lane) = nvlink_lane(id) {
        if lane >= nvlinks {
            return Err(ERROR_NOT_SUPPORTED);
        }
        return Ok(match id {
            84..=89 | 132..=137 => uint(if active(lane) {
                nvlink_speed_mbps(model.architecture).into()
            } else {
                0
            }),
            _ => ull(0),
        });
    }
    let need_nvlink = || {
        if nvlinks == 0 {
            Err(ERROR_NOT_SUPPORTED)
        } else {
            Ok(())
        }
    };
    let link_scope = || {
        need_nvlink()?;
        if scope < nvlinks {
            Ok(scope)
        } else {
            Err(ERROR_INVALID_ARGUMENT)
        }
    };
    Ok(match id {
        1 | 2 => uint(1),
        3 => ull(m.ecc_corrected_volatile),
        4 => ull(m.ecc_uncorrected_volatile),
        5 => ull(m.ecc_corrected_aggregate),
        6 => ull(m.ecc_uncorrected_aggregate),
        7..=31 | 92 | 93 => ull(0),
        // NVLink totals (CRC flit/data, replay, recovery, bandwidth C0/C1, ECC data).
        38 | 45 | 52 | 59 | 66 | 73 | 160 => {
            need_nvlink()?;
            ull(0)
        }
        74..=81 => ull(0),
        82 => {
            if !has_hbm(model.architecture) {
                return Err(ERROR_NOT_SUPPORTED);
            }
            uint(m.memory_temperature)
        }
        83 | 191 => ull(m.energy_mj),
        90 => {
            need_nvlink()?;
            uint(nvlink_speed_mbps(model.architecture).into())
        }
        91 => uint(nvlinks.into()),
        94 => uint(m.pcie_replay_counter),
        95 => uint(0),
        // NVLink throughput, data and raw, TX and RX: per link, or the whole GPU for a scope
        // beyond the links (UINT_MAX on Blackwell).
        138..=141 => {
            need_nvlink()?;
            ull(0)
        }
        142..=145 => {
            if !has_hbm(model.architecture) || model.architecture == Architecture::Volta {
                return Err(ERROR_NOT_SUPPORTED);
            }
            uint(match id {
                142 => m.remapped_rows_correctable,
                143 => m.remapped_rows_uncorrectable,
                144 => m.remapped_rows_pending,
                _ => m.remapped_rows_failure,
            })
        }
        147 => uint(if cx.nvswitch { nvlinks.into() } else { 0 }),
        161..=163 => {
            link_scope()?;
            ull(0)
        }
        164 => uint(if active(link_scope()?) {
            nvlink_speed_mbps(model.architecture).into()
        } else {
            0
        }),
        165 => uint(u64::from(active(link_scope()?))),
        166 => {
            link_scope()?;
            uint(nvlink_version(model.architecture).into())
        }
        185 | 186 => uint(m.power_mw),
        187 => uint((model.power_limit_mw / 2).into()),
        188 | 189 => uint(model.power_limit_mw.into()),
        190 | 192 => uint(m.power_limit_mw),
        199 => uint(u64::from(model.mig.is_some())),
        251..=255 => ull(0),
        _ => return Err(ERROR_NOT_SUPPORTED),
    })
}

/// Answer one field for one GPU: an override if the control interface set one, else the
/// simulated value. `id` is the client's id (in the driver's numbering).
pub fn read_field(
    scheme: FieldScheme,
    id: u32,
    scope: u32,
    cx: &FieldContext<'_>,
) -> Result<(ValueType, Num), Ret> {
    let canonical = scheme.to_canonical(id).ok_or(ERROR_INVALID_ARGUMENT)?;
    let fields = &cx.state.fields;
    let hit = fields
        .get(&override_key(canonical, Some(scope)))
        .or_else(|| fields.get(&override_key(canonical, None)));
    if let Some(o) = hit {
        return Ok((
            o.value_type.unwrap_or_else(|| natural_type(canonical)),
            o.value,
        ));
    }
    default_value(canonical, scope, cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_round_trips() {
        for scheme in [FieldScheme::V12, FieldScheme::V13] {
            for id in 0..scheme.max() {
                let c = scheme.to_canonical(id).unwrap();
                assert_eq!(scheme.from_canonical(c), id, "{scheme:?} {id}");
            }
            assert_eq!(scheme.to_canonical(scheme.max()), None);
        }
        // NVML 13: 269 is CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN, NVML 12's 251.
        assert_eq!(FieldScheme::V13.to_canonical(269), Some(251));
        // NVML 13: 251 is PWR_SMOOTHING_ENABLED, NVML 12's 256.
        assert_eq!(FieldScheme::V13.to_canonical(251), Some(256));
        assert_eq!(FieldScheme::V12.to_canonical(251), Some(251));
        assert_eq!(FieldScheme::V13.to_canonical(300), Some(300));
        assert_eq!(FieldScheme::V12.to_canonical(300), None);
        assert_eq!(FieldScheme::for_driver(580, 82), FieldScheme::V13);
        assert_eq!(FieldScheme::for_driver(580, 65), FieldScheme::V12);
        assert_eq!(FieldScheme::for_driver(590, 0), FieldScheme::V13);
    }

    #[test]
    fn lanes() {
        assert_eq!(nvlink_lane(32), Some(0));
        assert_eq!(nvlink_lane(38), None); // CRC flit total
        assert_eq!(nvlink_lane(39), Some(0));
        assert_eq!(nvlink_lane(73), None);
        assert_eq!(nvlink_lane(72), Some(5));
        assert_eq!(nvlink_lane(96), Some(6));
        assert_eq!(nvlink_lane(101), Some(11));
        assert_eq!(nvlink_lane(102), Some(6));
        assert_eq!(nvlink_lane(131), Some(11));
        assert_eq!(nvlink_lane(137), Some(11));
        assert_eq!(nvlink_lane(159), Some(11));
        assert_eq!(nvlink_lane(160), None);
    }

    #[test]
    fn encoding() {
        let v = Num::U(5).encode(ValueType::UnsignedInt);
        assert_eq!(unsafe { v.uiVal }, 5);
        let v = Num::I(-3).encode(ValueType::SignedLongLong);
        assert_eq!(unsafe { v.sllVal }, -3);
        let v = Num::F(1.5).encode(ValueType::Double);
        assert_eq!(unsafe { v.dVal }, 1.5);
        let v = Num::U(u64::MAX).encode(ValueType::UnsignedShort);
        assert_eq!(unsafe { v.usVal }, u16::MAX);
        let v = Num::U(7).encode(ValueType::UnsignedInt);
        assert_eq!(unsafe { v.ullVal }, 7, "unused bytes are zero");
    }
}
