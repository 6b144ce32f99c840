import GRDB

/// Indexes for the dashboard's per-region liveness questions (inactive meters of one region, and
/// the KPI document's inactive count with a region filter), which otherwise look up every inactive
/// meter's row to read its region.
///
/// Both are partial over meters that are *not* reporting, like `meter_inactive` and
/// `meter_never_reported`: the writer's per-commit update of a reporting meter's row (which sets
/// `last_received_ms` and clears `inactive_since_ms`) leaves them untouched, so the ingest path
/// pays nothing for them.
enum DashboardSchema {
    static func register(in migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v3-dashboard") { db in
            try db.execute(sql: """
                CREATE INDEX meter_inactive_region ON meter(region, inactive_since_ms) WHERE inactive_since_ms IS NOT NULL;
                CREATE INDEX meter_never_reported_region ON meter(region) WHERE last_received_ms IS NULL AND inactive_since_ms IS NULL;
                """)
        }
    }
}
