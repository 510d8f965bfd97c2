//! Permission and role names.
//!
//! Access is denied by default: a role grants exactly the permissions listed for
//! it in [`Role::permissions`], nothing else. Names are stable strings because
//! they are stored (audit records, API token scopes) and shown to operators.

use serde::{Deserialize, Serialize};

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(
    /// One thing an actor may be allowed to do.
    Permission {
        NodesRead => "nodes.read",
        NodesManage => "nodes.manage",
        RecordingsRead => "recordings.read",
        RecordingsControl => "recordings.control",
        RecordingsPlayback => "recordings.playback",
        RecordingsDownload => "recordings.download",
        RecordingsDelete => "recordings.delete",
        JobsRead => "jobs.read",
        JobsManage => "jobs.manage",
        SchedulesRead => "schedules.read",
        SchedulesManage => "schedules.manage",
        HealthRead => "health.read",
        HealthAcknowledge => "health.acknowledge",
        SettingsManage => "settings.manage",
        UsersManage => "users.manage",
        AuditRead => "audit.read",
        UpdatesManage => "updates.manage",
        MetricsRead => "metrics.read",
    }
);

named_enum!(
    /// A named set of permissions assigned to users and API tokens.
    Role {
        Owner => "owner",
        Admin => "admin",
        Operator => "operator",
        Technician => "technician",
        Viewer => "viewer",
        Auditor => "auditor",
    }
);

impl Role {
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        // Read-only, metrics included: a Prometheus scrape token needs
        // nothing more.
        const VIEW: &[Permission] = &[
            NodesRead,
            RecordingsRead,
            RecordingsPlayback,
            JobsRead,
            SchedulesRead,
            HealthRead,
            MetricsRead,
        ];
        match self {
            Role::Owner => Permission::ALL,
            Role::Admin => &[
                NodesRead,
                NodesManage,
                RecordingsRead,
                RecordingsControl,
                RecordingsPlayback,
                RecordingsDownload,
                RecordingsDelete,
                JobsRead,
                JobsManage,
                SchedulesRead,
                SchedulesManage,
                HealthRead,
                HealthAcknowledge,
                SettingsManage,
                AuditRead,
                UpdatesManage,
                MetricsRead,
            ],
            Role::Operator => &[
                NodesRead,
                RecordingsRead,
                RecordingsControl,
                RecordingsPlayback,
                RecordingsDownload,
                JobsRead,
                JobsManage,
                SchedulesRead,
                SchedulesManage,
                HealthRead,
                HealthAcknowledge,
                MetricsRead,
            ],
            Role::Technician => &[
                NodesRead,
                NodesManage,
                RecordingsRead,
                RecordingsPlayback,
                JobsRead,
                SchedulesRead,
                HealthRead,
                HealthAcknowledge,
                UpdatesManage,
                MetricsRead,
            ],
            Role::Viewer => VIEW,
            Role::Auditor => &[NodesRead, JobsRead, HealthRead, AuditRead],
        }
    }

    pub fn allows(self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        for &r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Permission::parse("nodes.everything"), None);
    }

    #[test]
    fn owner_has_everything_and_others_are_subsets() {
        for &p in Permission::ALL {
            assert!(Role::Owner.allows(p));
        }
        assert!(!Role::Admin.allows(Permission::UsersManage));
        assert!(!Role::Viewer.allows(Permission::JobsManage));
        assert!(!Role::Viewer.allows(Permission::RecordingsDownload));
        assert!(!Role::Auditor.allows(Permission::RecordingsPlayback));
        assert!(Role::Auditor.allows(Permission::AuditRead));
    }
}
