"""NVIDIA's XID catalog as data: what each XID means, and the class gpulet's default gives it.

Pure data and lookups: the health classes (:data:`HealthClass`), the catalog table
(:data:`XID_CATALOG`, one :class:`XidInfo` per XID), the NVML codes the health engine names
(:data:`GPU_IS_LOST`, :data:`XID_UNKNOWN`, :data:`XID_FALLEN_OFF_BUS`), and the XIDs NVIDIA's
device plugin ignores (:data:`NVIDIA_DEVICE_PLUGIN_IGNORED_XIDS`, defined once, in
:mod:`gpulet.config`, which publishes it with the ``nvidia-device-plugin`` preset). Which class
an event gets under a policy is :mod:`gpulet.health.policy`'s business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from gpulet.config import NVIDIA_DEVICE_PLUGIN_IGNORED_XIDS

__all__ = [
    "DEFAULT_XID_CLASS",
    "GPU_IS_LOST",
    "HEALTH_CLASSES",
    "NVIDIA_DEVICE_PLUGIN_IGNORED_XIDS",
    "XID_CATALOG",
    "XID_FALLEN_OFF_BUS",
    "XID_UNKNOWN",
    "HealthClass",
    "XidInfo",
    "describe_xid",
]

HealthClass = Literal["ignore", "recoverable", "reset-required", "permanent"]
HEALTH_CLASSES: Final[tuple[HealthClass, ...]] = (
    "ignore",
    "recoverable",
    "reset-required",
    "permanent",
)

#: ``NVML_ERROR_GPU_IS_LOST``: the GPU fell off the bus.
GPU_IS_LOST: Final = 15
#: The XID NVML reports when it cannot name the XID.
XID_UNKNOWN: Final = 999
#: ``ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS``: the GPU fell off the bus.
XID_FALLEN_OFF_BUS: Final = 79


@dataclass(frozen=True)
class XidInfo:
    """One XID of NVIDIA's XID catalog and the class gpulet's default preset gives it."""

    xid: int
    #: NVIDIA's mnemonic, e.g. ``ROBUST_CHANNEL_GPU_ECC_DBE``.
    mnemonic: str
    description: str
    #: The catalog's immediate-action resolution bucket, e.g. ``RESET_GPU``.
    catalog_action: str
    health_class: HealthClass


#: Any XID the catalog table below does not list (including 999, "unknown").
DEFAULT_XID_CLASS: Final[HealthClass] = "recoverable"


def _table() -> dict[int, XidInfo]:
    # (xid, mnemonic, description, immediate action in NVIDIA's XID catalog, class). The class
    # follows the immediate action: IGNORE and RESTART_APP (the GPU is fine, the application
    # must restart) -> ignore; RESET_GPU, RESTART_BM, RESTART_VM and the DBE / NVLink workflows
    # that say "a GPU reset or node reboot is needed" -> reset-required. Where the catalog's
    # action depends on a sub-code NVML's event does not carry (the NVLink5 XIDs 144-148, 150)
    # or the XID is unused on current GPUs (61), the class is recoverable.
    rows: list[tuple[int, str, str, str, HealthClass]] = [
        (
            8,
            "ROBUST_CHANNEL_FIFO_ERROR_IDLE_TIMEOUT",
            "GPU stopped processing",
            "RESTART_APP",
            "ignore",
        ),
        (
            11,
            "ROBUST_CHANNEL_GR_ERROR_MISSING_HW",
            "Invalid or corrupted push buffer stream",
            "RESTART_APP",
            "ignore",
        ),
        (13, "ROBUST_CHANNEL_GR_EXCEPTION", "Graphics Engine Exception", "RESTART_APP", "ignore"),
        (14, "ROBUST_CHANNEL_FAKE_ERROR", "Fake or injected error", "IGNORE", "ignore"),
        (
            25,
            "ROBUST_CHANNEL_GR_ILLEGAL_NOTIFY",
            "Invalid or illegal push buffer stream",
            "RESTART_APP",
            "ignore",
        ),
        (
            31,
            "ROBUST_CHANNEL_FIFO_ERROR_MMU_ERR_FLT",
            "GPU memory page fault",
            "RESTART_APP",
            "ignore",
        ),
        (
            32,
            "ROBUST_CHANNEL_PBDMA_ERROR",
            "Invalid or corrupted push buffer stream (PBDMA)",
            "RESTART_APP",
            "ignore",
        ),
        (
            37,
            "ROBUST_CHANNEL_FECS_ERR_UNIMP_FIRMWARE_METHOD",
            "Driver firmware error",
            "IGNORE",
            "ignore",
        ),
        (
            38,
            "ROBUST_CHANNEL_FECS_ERR_WATCHDOG_TIMEOUT",
            "Driver firmware error",
            "IGNORE",
            "ignore",
        ),
        (39, "ROBUST_CHANNEL_CE0_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (40, "ROBUST_CHANNEL_CE1_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (41, "ROBUST_CHANNEL_CE2_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (
            43,
            "ROBUST_CHANNEL_RESETCHANNEL_VERIF_ERROR",
            "GPU stopped processing",
            "IGNORE",
            "ignore",
        ),
        (
            44,
            "ROBUST_CHANNEL_GR_FAULT_DURING_CTXSW",
            "Graphics Engine fault during context switch",
            "IGNORE",
            "ignore",
        ),
        (
            45,
            "ROBUST_CHANNEL_PREEMPTIVE_REMOVAL",
            "Preemptive cleanup, due to previous errors",
            "WORKFLOW_XID_45",
            "ignore",
        ),
        (
            46,
            "ROBUST_CHANNEL_GPU_TIMEOUT_ERROR",
            "GPU stopped processing",
            "RESET_GPU",
            "reset-required",
        ),
        (
            48,
            "ROBUST_CHANNEL_GPU_ECC_DBE",
            "Double Bit ECC Error",
            "WORKFLOW_XID_48",
            "reset-required",
        ),
        (
            54,
            "SILENT_RUNNING_PWR_REDUCED_CLOCKING",
            "Auxiliary power is not connected to the GPU board",
            "CHECK_MECHANICALS",
            "reset-required",
        ),
        (60, "ROBUST_CHANNEL_SEC2_ERROR", "Video processor exception", "RESTART_APP", "ignore"),
        (
            61,
            "PMU_BREAKPOINT",
            "Internal micro-controller breakpoint/warning",
            "CONTACT_SUPPORT",
            "recoverable",
        ),
        (62, "PMU_HALT_ERROR", "Internal micro-controller halt", "RESET_GPU", "reset-required"),
        (63, "INFOROM_DRAM_RETIREMENT_EVENT", "GPU memory remapping event", "IGNORE", "ignore"),
        (
            64,
            "INFOROM_DRAM_RETIREMENT_FAILURE",
            "GPU memory remapping failure",
            "RESET_GPU",
            "reset-required",
        ),
        (
            66,
            "ROBUST_CHANNEL_FECS_ERR_REG_ACCESS_VIOLATION",
            "Illegal access by driver",
            "IGNORE",
            "ignore",
        ),
        (
            67,
            "ROBUST_CHANNEL_FECS_ERR_VERIF_VIOLATION",
            "Illegal access by driver",
            "IGNORE",
            "ignore",
        ),
        (
            68,
            "ROBUST_CHANNEL_NVDEC0_ERROR",
            "NVDEC0 Exception (video processor)",
            "RESTART_APP",
            "ignore",
        ),
        (
            69,
            "ROBUST_CHANNEL_GR_CLASS_ERROR",
            "Graphics Engine class error",
            "RESTART_APP",
            "ignore",
        ),
        (70, "ROBUST_CHANNEL_CE3_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (71, "ROBUST_CHANNEL_CE4_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (72, "ROBUST_CHANNEL_CE5_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (74, "NVLINK_ERROR", "NVLink Error", "WORKFLOW_NVLINK_ERR", "reset-required"),
        (75, "ROBUST_CHANNEL_CE6_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (76, "ROBUST_CHANNEL_CE7_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (77, "ROBUST_CHANNEL_CE8_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (78, "VGPU_START_ERROR", "vGPU Start Error", "UPDATE_SWFW", "recoverable"),
        (
            79,
            "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS",
            "GPU has fallen off the bus",
            "RESTART_BM",
            "reset-required",
        ),
        (
            80,
            "PBDMA_PUSHBUFFER_CRC_MISMATCH",
            "Corrupted data sent to GPU",
            "RESTART_APP",
            "ignore",
        ),
        (82, "ROBUST_CHANNEL_NVJPG0_ERROR", "NVJPG0 Error", "RESTART_APP", "ignore"),
        (83, "ROBUST_CHANNEL_NVDEC1_ERROR", "NVDEC1 Error", "RESTART_APP", "ignore"),
        (84, "ROBUST_CHANNEL_NVDEC2_ERROR", "NVDEC2 Error", "RESTART_APP", "ignore"),
        (85, "ROBUST_CHANNEL_CE9_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (86, "ROBUST_CHANNEL_OFA0_ERROR", "OFA Exception", "RESTART_APP", "ignore"),
        (88, "ROBUST_CHANNEL_NVDEC3_ERROR", "NVDEC3 Error", "RESTART_APP", "ignore"),
        (89, "ROBUST_CHANNEL_NVDEC4_ERROR", "NVDEC4 Error", "RESTART_APP", "ignore"),
        (92, "EXCESSIVE_SBE_INTERRUPTS", "High single-bit ECC error rate", "IGNORE", "ignore"),
        (
            93,
            "INFOROM_ERASE_LIMIT_EXCEEDED",
            "Non-fatal violation of provisioned InfoROM wear limit",
            "IGNORE",
            "ignore",
        ),
        (94, "ROBUST_CHANNEL_CONTAINED_ERROR", "Contained memory error", "RESTART_APP", "ignore"),
        (
            95,
            "ROBUST_CHANNEL_UNCONTAINED_ERROR",
            "Uncontained memory error",
            "RESET_GPU",
            "reset-required",
        ),
        (96, "ROBUST_CHANNEL_NVDEC5_ERROR", "NVDEC5 Error", "RESTART_APP", "ignore"),
        (97, "ROBUST_CHANNEL_NVDEC6_ERROR", "NVDEC6 Error", "RESTART_APP", "ignore"),
        (98, "ROBUST_CHANNEL_NVDEC7_ERROR", "NVDEC7 Error", "RESTART_APP", "ignore"),
        (99, "ROBUST_CHANNEL_NVJPG1_ERROR", "NVJPG1 Error", "RESTART_APP", "ignore"),
        (100, "ROBUST_CHANNEL_NVJPG2_ERROR", "NVJPG2 Error", "RESTART_APP", "ignore"),
        (101, "ROBUST_CHANNEL_NVJPG3_ERROR", "NVJPG3 Error", "RESTART_APP", "ignore"),
        (102, "ROBUST_CHANNEL_NVJPG4_ERROR", "NVJPG4 Error", "RESTART_APP", "ignore"),
        (103, "ROBUST_CHANNEL_NVJPG5_ERROR", "NVJPG5 Error", "RESTART_APP", "ignore"),
        (104, "ROBUST_CHANNEL_NVJPG6_ERROR", "NVJPG6 Error", "RESTART_APP", "ignore"),
        (105, "ROBUST_CHANNEL_NVJPG7_ERROR", "NVJPG7 Error", "RESTART_APP", "ignore"),
        (106, "SMBPBI_TEST_MESSAGE", "SMBPBI Test Message", "IGNORE", "ignore"),
        (107, "SMBPBI_TEST_MESSAGE_SILENT", "SMBPBI Test Message Silent", "IGNORE", "ignore"),
        (
            108,
            "NVLINK_REMOTE_TRANSLATION_ERROR",
            "NVLink remote translation error",
            "IGNORE",
            "ignore",
        ),
        (
            109,
            "ROBUST_CHANNEL_CTXSW_TIMEOUT_ERROR",
            "Context Switch Timeout Error",
            "RESET_GPU",
            "reset-required",
        ),
        (110, "SEC_FAULT_ERROR", "Security Fault Error", "RESET_GPU", "reset-required"),
        (119, "GSP_RPC_TIMEOUT", "GSP RPC Timeout", "RESET_GPU", "reset-required"),
        (120, "GSP_ERROR", "GSP Error", "RESET_GPU", "reset-required"),
        (
            121,
            "C2C_ERROR",
            "C2C Error (corrected errors on the link to the Grace CPU)",
            "IGNORE",
            "ignore",
        ),
        (126, "ROBUST_CHANNEL_CE10_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (127, "ROBUST_CHANNEL_CE11_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (128, "ROBUST_CHANNEL_CE12_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (129, "ROBUST_CHANNEL_CE13_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (130, "ROBUST_CHANNEL_CE14_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (131, "ROBUST_CHANNEL_CE15_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (132, "ROBUST_CHANNEL_CE16_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (133, "ROBUST_CHANNEL_CE17_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (134, "ROBUST_CHANNEL_CE18_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (135, "ROBUST_CHANNEL_CE19_ERROR", "Copy Engine Exception", "RESTART_APP", "ignore"),
        (136, "ALI_TRAINING_FAIL", "NVLink link training failed", "RESET_GPU", "reset-required"),
        (137, "NVLINK_PRIV_ERR", "NVLink Privilege Error", "IGNORE", "ignore"),
        (139, "ROBUST_CHANNEL_OFA1_ERROR", "OFA1 Error", "RESTART_APP", "ignore"),
        (
            140,
            "UNRECOVERABLE_ECC_ERROR_ESCAPE",
            "ECC Unrecovered Error",
            "RESET_GPU",
            "reset-required",
        ),
        (141, "ROBUST_CHANNEL_FAST_PATH_ERROR", "CUDA Fast Path Error", "IGNORE", "ignore"),
        (143, "GPU_INIT_ERROR", "GPU Initialization Error", "RESET_GPU", "reset-required"),
        (144, "NVLINK_SAW_ERROR", "NVLink: SAW Error", "WORKFLOW_NVLINK5_ERR", "recoverable"),
        (145, "NVLINK_RLW_ERROR", "NVLink: RLW Error", "WORKFLOW_NVLINK5_ERR", "recoverable"),
        (146, "NVLINK_TLW_ERROR", "NVLink: TLW Error", "WORKFLOW_NVLINK5_ERR", "recoverable"),
        (147, "NVLINK_TREX_ERROR", "NVLink: TREX Error", "WORKFLOW_NVLINK5_ERR", "recoverable"),
        (
            148,
            "NVLINK_NVLPW_CTRL_ERROR",
            "NVLink: NVLPW_CTRL Error",
            "WORKFLOW_NVLINK5_ERR",
            "recoverable",
        ),
        (
            149,
            "NVLINK_NETIR_ERROR",
            "NVLink: NETIR Error (link fatal)",
            "WORKFLOW_NVLINK5_ERR",
            "reset-required",
        ),
        (150, "NVLINK_MSE_ERROR", "NVLink: MSE Error", "WORKFLOW_NVLINK5_ERR", "recoverable"),
        (
            151,
            "ROBUST_CHANNEL_KEY_ROTATION_ERROR",
            "Key rotation Error",
            "RESTART_VM",
            "reset-required",
        ),
        (
            154,
            "GPU_RECOVERY_ACTION_CHANGED",
            "GPU Recovery Action Changed (accompanies another XID)",
            "XID_154",
            "ignore",
        ),
        (155, "NVLINK_SW_DEFINED_ERROR", "NVLink: SW Defined Error", "RESET_GPU", "reset-required"),
        (
            156,
            "RESOURCE_RETIREMENT_EVENT",
            "Resource Retirement Event",
            "RESET_GPU",
            "reset-required",
        ),
        (157, "RESOURCE_RETIREMENT_FAILURE", "Resource Retirement Failure", "IGNORE", "ignore"),
        (158, "GPU_FATAL_TIMEOUT", "GPU Fatal Timeout", "RESET_GPU", "reset-required"),
        (
            159,
            "ROBUST_CHANNEL_CHI_NON_DATA_ERROR",
            "CHI Non-Data Error",
            "CHECK_UVM",
            "recoverable",
        ),
        (160, "CHANNEL_RETIREMENT_EVENT", "Channel Retirement Event", "IGNORE", "ignore"),
        (161, "CHANNEL_RETIREMENT_FAILURE", "Channel Retirement Failure", "IGNORE", "ignore"),
        (
            162,
            "PSHC_REENGAGED",
            "Power smoothing circuitry re-engaged",
            "none (no GPU reset required)",
            "ignore",
        ),
        (
            163,
            "PSHC_DISENGAGED",
            "Power smoothing circuitry disengaged",
            "none (no GPU reset required)",
            "ignore",
        ),
        (
            164,
            "PSHC_LOW_LIFETIME",
            "Power smoothing circuitry low lifetime",
            "none (monitor)",
            "ignore",
        ),
        (
            165,
            "PSHC_ZERO_LIFETIME",
            "Power smoothing circuitry lifetime exhausted",
            "none (monitor)",
            "ignore",
        ),
        (167, "PCIE_FATAL_TIMEOUT", "PCIe fatal timeout", "none listed (fatal)", "reset-required"),
        (
            169,
            "SEC2_HALT_ERROR",
            "Internal micro-controller halt",
            "none listed (as XID 62)",
            "reset-required",
        ),
        (
            171,
            "UNCORRECTABLE_DRAM_ERROR",
            "Uncorrectable DRAM error (details of XID 48)",
            "as XID 48",
            "reset-required",
        ),
        (
            172,
            "UNCORRECTABLE_SRAM_ERROR",
            "Uncorrectable SRAM error (details of XID 48)",
            "as XID 48",
            "reset-required",
        ),
    ]
    return {xid: XidInfo(xid, m, d, a, c) for xid, m, d, a, c in rows}


#: NVIDIA's XID catalog (Ampere and later), as the ``xid-catalog`` preset reads it.
XID_CATALOG: Final[Mapping[int, XidInfo]] = MappingProxyType(_table())


def describe_xid(xid: int) -> str:
    """A short description of ``xid`` ("Double Bit ECC Error"), or "unknown XID"."""
    info = XID_CATALOG.get(xid)
    if info is not None:
        return info.description
    return "unknown XID" if xid == XID_UNKNOWN else "XID not in gpulet's catalog table"
