//! `admission.*`: what the host keeps for itself before a task is admitted.

use super::collector::Collector;
use super::policy::resources_of;
use super::raw::RawAdmission;

const DEFAULT_MIN_FREE_DISK: u64 = 1 << 30;

/// Resource-aware admission settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionSettings {
    /// CPU and memory held back for the host itself.
    pub reserve: crate::spec::policy::Resources,
    /// Tasks are rejected while `state_dir` or Docker's data dir has less free space.
    pub min_free_disk: u64,
}

pub(super) fn admission_section(
    raw: Option<RawAdmission>,
    c: &mut Collector<'_>,
) -> AdmissionSettings {
    let adm = raw.unwrap_or_default();
    let reserve = resources_of("admission.reserve", adm.reserve, c);
    let min_free_disk = c.size_min(
        "admission.min_free_disk",
        adm.min_free_disk.as_ref(),
        DEFAULT_MIN_FREE_DISK,
        0,
        "use a size such as 1GiB, or 0 to disable the check",
    );
    AdmissionSettings {
        reserve,
        min_free_disk,
    }
}
