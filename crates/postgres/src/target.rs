//! Where a PostgreSQL recovery stops, and which base backups can get there: the one rule the
//! restore's choice of base backup and its fallback to a witnessed one both apply.

use crate::base_backup::BaseBackupInfo;
use crate::lsn::Lsn;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the WAL the vault holds.
    Latest,
    /// The last transaction committed at or before this time (ns since the Unix epoch).
    Time(i64),
    /// This WAL position (inclusive).
    Lsn(Lsn),
    /// A named restore point (`pg_create_restore_point`, a consistency group's point):
    /// recovery stops just after its record, exactly there.
    RestorePoint {
        /// Its name (`recovery_target_name`).
        name: String,
        /// The WAL position just after its record (to choose the base backup).
        lsn: Lsn,
    },
}

/// True when a recovery to `target` can start from this base backup.
pub fn reaches(info: &BaseBackupInfo, target: &RecoveryTarget) -> bool {
    match target {
        RecoveryTarget::Latest => true,
        RecoveryTarget::Time(t) => info.stopped_at_ns <= *t,
        RecoveryTarget::Lsn(l) | RecoveryTarget::RestorePoint { lsn: l, .. } => info.stop_lsn <= *l,
    }
}
