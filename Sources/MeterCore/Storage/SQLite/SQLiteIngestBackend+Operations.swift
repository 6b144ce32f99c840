import Foundation
import GRDB

/// The writer's work besides readings: liveness flags, KPI snapshots, company imports and settings,
/// each one transaction on the writer's connection.
extension SQLiteIngestBackend {
    func flagInactive(_ candidates: [StoredMeterName], cutoffMs: Int64, startMs: Int64) throws -> [InactiveFlag] {
        try self.database.pool.write { db in
            // The condition is checked again: a reading may have arrived since the candidates were read.
            let update = try db.makeStatement(
                sql: """
                    UPDATE meter SET inactive_since_ms = COALESCE(last_received_ms, ?)
                    WHERE id = ? AND inactive_since_ms IS NULL AND COALESCE(last_received_ms, ?) < ?
                    """)
            var flagged: [InactiveFlag] = []
            for meter in candidates {
                try update.execute(arguments: [startMs, meter.id, startMs, cutoffMs])
                if db.changesCount > 0 {
                    let last = try Int64.fetchOne(db, sql: "SELECT last_received_ms FROM meter WHERE id = ?", arguments: [meter.id])
                    flagged.append(InactiveFlag(meter: meter, lastReceivedMs: last))
                }
            }
            return flagged
        }
    }

    func recordSnapshot(_ document: String, period: KPIPeriod, generatedMs: Int64, history: Int) throws {
        try self.database.pool.write { db in
            try db.execute(
                sql: "INSERT INTO kpi_snapshot (generated_ms, period_from, period_to, document) VALUES (?, ?, ?, ?)",
                arguments: [generatedMs, period.from.key, period.to.key, document])
            try db.execute(
                sql: """
                    DELETE FROM kpi_snapshot WHERE id <= (SELECT id FROM kpi_snapshot ORDER BY id DESC LIMIT 1 OFFSET ?)
                    """, arguments: [history])
        }
    }

    func importCompanyFile(_ path: String, progress: (@Sendable (ImportProgress) -> Void)?) -> FileImportResult {
        SQLiteCompanyImportSink.importFile(path, database: self.database, progress: progress)
    }

    /// Records the zone of the calendar months, or refuses another zone once months are stored:
    /// readings already counted stay in the months of the zone they were counted in, so a new zone
    /// would silently mix two calendars in one figure.
    func recordTimeZone(_ zone: TimeZone) throws {
        try self.database.pool.write { db in
            let recorded = try String.fetchOne(db, sql: "SELECT value FROM store_setting WHERE name = 'time_zone'")
            if let recorded, !zone.keepsTheSameCalendar(as: recorded),
                try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM meter_month) OR EXISTS (SELECT 1 FROM meter_day)") == true
            {
                throw ConfigurationError(
                    key: "timezone",
                    "the database's months follow \(recorded), not \(zone.identifier): its readings were counted in "
                        + "\(recorded)'s months (set timezone = \(recorded), or start \(zone.identifier) on a new data directory)")
            }
            try db.execute(
                sql: """
                    INSERT INTO store_setting (name, value) VALUES ('time_zone', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value
                    """, arguments: [zone.identifier])
        }
    }
}

extension SQLiteIngestBackend {
    func recordAlerts(_ alerts: [Alert], history: Int) throws {
        guard !alerts.isEmpty else { return }
        try self.database.pool.write { db in
            let upsert = try db.makeStatement(
                sql: """
                    INSERT INTO alert (id, rule, subject, fired_ms, resolved_ms, detail) VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT (id) DO UPDATE SET resolved_ms = excluded.resolved_ms, detail = excluded.detail
                    """)
            for alert in alerts {
                try upsert.execute(arguments: [alert.id, alert.rule.rawValue, alert.subject, alert.firedMs, alert.resolvedMs, alert.detail])
            }
            if alerts.contains(where: { $0.state == .resolved }) {
                try db.execute(
                    sql: """
                        DELETE FROM alert WHERE resolved_ms IS NOT NULL AND resolved_ms < (
                            SELECT resolved_ms FROM alert WHERE resolved_ms IS NOT NULL ORDER BY resolved_ms DESC LIMIT 1 OFFSET ?)
                        """, arguments: [history - 1])
            }
        }
    }
}
