import Foundation
import GRDB

extension SQLiteMeterStore {
    package func alerts(state: AlertState?, limit: Int) async throws -> (alerts: [Alert], firing: Int) {
        try await self.database.pool.read { db in
            let firing = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM alert WHERE resolved_ms IS NULL") ?? 0
            var alerts: [Alert] = []
            if state != .resolved {
                alerts += try Self.alerts(db, sql: "SELECT * FROM alert WHERE resolved_ms IS NULL ORDER BY fired_ms, id LIMIT ?", limit: limit)
            }
            if state != .firing, alerts.count < limit {
                alerts += try Self.alerts(
                    db, sql: "SELECT * FROM alert WHERE resolved_ms IS NOT NULL ORDER BY resolved_ms DESC, id LIMIT ?", limit: limit - alerts.count)
            }
            return (alerts, firing)
        }
    }

    private static func alerts(_ db: Database, sql: String, limit: Int) throws -> [Alert] {
        try Row.fetchAll(db, sql: sql, arguments: [limit]).compactMap { row in
            // A rule this build does not know (a newer meterd wrote it) is left out rather than failing the list.
            guard let rule = AlertRule(rawValue: row["rule"]) else { return nil }
            let resolved: Int64? = row["resolved_ms"]
            return Alert(
                rule: rule, subject: row["subject"], state: resolved == nil ? .firing : .resolved, firedMs: row["fired_ms"],
                resolvedMs: resolved, detail: row["detail"])
        }
    }
}
