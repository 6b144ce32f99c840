import Foundation
import GRDB

/// SQLite's side of a company import: each row goes into the file's transaction as it passes,
/// through statements prepared once (GRDB's statement cache).
final class SQLiteCompanyImportSink: CompanyImportSink {
    private let db: Database

    init(db: Database) {
        self.db = db
    }

    /// Imports one file in one write transaction of `database`.
    static func importFile(_ path: String, database: MeterDatabase, progress: (@Sendable (ImportProgress) -> Void)?) -> FileImportResult {
        CompanyFileImport.importFile(path, progress: progress) { body in
            try database.pool.write { db in
                let sink = SQLiteCompanyImportSink(db: db)
                let result = try body(sink)
                // Meters the file moved to another region take their reporting days with them.
                if let before = sink.regionsBeforeAssigning,
                    try ReadSuccessRollups.meterRegions(db).contains(where: { id, region in before[id].map { $0 != region } ?? false })
                {
                    try ReadSuccessRollups.rebuildRegionDays(db)
                }
                return result
            }
        }
    }

    /// Every meter's region before the file's first customer or meter row, which may assign meters
    /// to regions; `nil` for a file that has none.
    private(set) var regionsBeforeAssigning: [Int64: String]?

    private func noteRegionsBeforeAssigning() throws {
        if self.regionsBeforeAssigning == nil { self.regionsBeforeAssigning = try ReadSuccessRollups.meterRegions(self.db) }
    }

    private func statement(_ sql: String) throws -> RawStatement {
        try RawStatement(self.db, sql: sql)
    }

    // MARK: Lookups

    func knownCustomers() throws -> Set<Int64> {
        Set(try Int64.fetchAll(self.db, sql: "SELECT id FROM customer"))
    }

    func customerRegions() throws -> [Int64: String] {
        Dictionary(
            try Row.fetchAll(self.db, sql: "SELECT id, region FROM customer").map { ($0["id"] as Int64, $0["region"] as String) },
            uniquingKeysWith: { first, _ in first })
    }

    func customersWithOwnMeters() throws -> Set<Int64> {
        var own = Set<Int64>()
        for row in try Row.fetchAll(self.db, sql: "SELECT name, customer_id FROM meter WHERE customer_id IS NOT NULL") {
            let customer: Int64 = row["customer_id"]
            if (row["name"] as String) != defaultMeterName(customer: customer) { own.insert(customer) }
        }
        return own
    }

    func meterOfCustomer() throws -> [Int64: Int64] {
        var meters: [Int64: Int64] = [:]
        for row in try Row.fetchAll(self.db, sql: "SELECT id, name, customer_id FROM meter WHERE customer_id IS NOT NULL ORDER BY id") {
            let customer: Int64 = row["customer_id"]
            if (row["name"] as String) == defaultMeterName(customer: customer) || meters[customer] == nil { meters[customer] = row["id"] }
        }
        return meters
    }

    // MARK: Rows

    func technician(id: Int64, name: String) throws {
        let upsert = try self.statement("INSERT INTO technician (id, name) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name")
        upsert.bind(1, id)
        upsert.bind(2, name)
        try upsert.execute()
    }

    func customer(id: Int64, region: String, installed: CompanyDate?, hasOwnMeters: Bool) throws {
        try self.noteRegionsBeforeAssigning()
        let upsertCustomer = try self.statement(
            """
            INSERT INTO customer (id, region, installed_on, installed_month) VALUES (?, ?, ?, ?)
            ON CONFLICT (id) DO UPDATE SET region = excluded.region, installed_on = excluded.installed_on,
                installed_month = excluded.installed_month
            """)
        upsertCustomer.bind(1, id)
        upsertCustomer.bind(2, region)
        upsertCustomer.bind(3, installed?.text)
        if let installed { upsertCustomer.bind(4, installed.monthKey) } else { upsertCustomer.bind(4, nil as String?) }
        try upsertCustomer.execute()
        if hasOwnMeters {
            let updateRegion = try self.statement("UPDATE meter SET region = ? WHERE customer_id = ?")
            updateRegion.bind(1, region)
            updateRegion.bind(2, id)
            try updateRegion.execute()
        } else {
            let upsertMeter = try self.statement(
                """
                INSERT INTO meter (name, customer_id, region) VALUES (?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET customer_id = excluded.customer_id, region = excluded.region
                WHERE meter.customer_id IS NULL OR meter.customer_id = excluded.customer_id
                """)
            upsertMeter.bind(1, defaultMeterName(customer: id))
            upsertMeter.bind(2, id)
            upsertMeter.bind(3, region)
            try upsertMeter.execute()
        }
    }

    func meter(name: String, customer: Int64, region: String) throws {
        try self.noteRegionsBeforeAssigning()
        let upsert = try self.statement(
            """
            INSERT INTO meter (name, customer_id, region) VALUES (?, ?, ?)
            ON CONFLICT (name) DO UPDATE SET customer_id = excluded.customer_id, region = excluded.region
            """)
        upsert.bind(1, name)
        upsert.bind(2, customer)
        upsert.bind(3, region)
        try upsert.execute()
    }

    func dropReplacedDefaultMeter(customer: Int64) throws {
        // A default meter that never reported holds only imported months: they move to the
        // customer's first own meter (merged as a re-import would), so the placeholder can go.
        let move = try self.statement(
            """
            INSERT INTO meter_month (meter_id, month, kwh, revenue, imported_status, imported_kwh, imported_revenue)
            SELECT (SELECT id FROM meter WHERE customer_id = ?2 AND name <> ?1 ORDER BY id LIMIT 1),
                   month, imported_kwh, imported_revenue, imported_status, imported_kwh, imported_revenue
            FROM meter_month
            WHERE meter_id = (SELECT id FROM meter WHERE name = ?1 AND customer_id = ?2 AND readings_total = 0)
                AND imported_status IS NOT NULL AND readings = 0 AND estimated = 0
                AND EXISTS (SELECT 1 FROM meter WHERE customer_id = ?2 AND name <> ?1)
            \(ImportedMonthSQL.onConflict)
            """)
        move.bind(1, defaultMeterName(customer: customer))
        move.bind(2, customer)
        try move.execute()
        let clear = try self.statement(
            """
            DELETE FROM meter_month
            WHERE meter_id = (SELECT id FROM meter WHERE name = ?1 AND customer_id = ?2 AND readings_total = 0)
                AND imported_status IS NOT NULL AND readings = 0 AND estimated = 0
                AND EXISTS (SELECT 1 FROM meter WHERE customer_id = ?2 AND name <> ?1)
            """)
        clear.bind(1, defaultMeterName(customer: customer))
        clear.bind(2, customer)
        try clear.execute()
        let drop = try self.statement(
            """
            DELETE FROM meter WHERE name = ? AND customer_id = ? AND readings_total = 0
                AND NOT EXISTS (SELECT 1 FROM meter_month WHERE meter_month.meter_id = meter.id)
            """)
        drop.bind(1, defaultMeterName(customer: customer))
        drop.bind(2, customer)
        try drop.execute()
    }

    func clearConcentrators() throws {
        try self.db.execute(sql: "DELETE FROM concentrator_meter")
    }

    func concentratorMeter(concentrator: String, meter: String) throws {
        let insert = try self.statement("INSERT INTO concentrator_meter (concentrator, meter) VALUES (?, ?)")
        insert.bind(1, concentrator)
        insert.bind(2, meter)
        try insert.execute()
    }

    func monthly(meterID: Int64, month: Int, kwh: Double, revenue: Double, status: MeterHealth) throws {
        let upsert = try self.statement(
            """
            INSERT INTO meter_month (meter_id, month, kwh, revenue, imported_status, imported_kwh, imported_revenue)
            VALUES (?, ?, ?, ?, ?, ?, ?)
            \(ImportedMonthSQL.onConflict)
            """)
        upsert.bind(1, meterID)
        upsert.bind(2, month)
        upsert.bind(3, kwh)
        upsert.bind(4, revenue)
        upsert.bind(5, Int64(status.rawValue))
        upsert.bind(6, kwh)
        upsert.bind(7, revenue)
        try upsert.execute()
    }

    func bill(customer: Int64, month: Int, amount: Double, paid: Bool) throws {
        let upsert = try self.statement(
            """
            INSERT INTO bill (customer_id, month, amount, paid) VALUES (?, ?, ?, ?)
            ON CONFLICT (customer_id, month) DO UPDATE SET amount = excluded.amount, paid = excluded.paid
            """)
        upsert.bind(1, customer)
        upsert.bind(2, month)
        upsert.bind(3, amount)
        upsert.bind(4, paid ? 1 : 0)
        try upsert.execute()
    }

    func maintenance(customer: Int64, request: CompanyDate, technician: Int64, ordinal: Int, resolution: CompanyDate?) throws {
        let upsert = try self.statement(
            """
            INSERT INTO maintenance (customer_id, request_date, technician_id, ordinal, request_month,
                                     resolution_date, resolution_month, resolution_days)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (customer_id, request_date, technician_id, ordinal) DO UPDATE SET
                request_month = excluded.request_month, resolution_date = excluded.resolution_date,
                resolution_month = excluded.resolution_month, resolution_days = excluded.resolution_days
            """)
        upsert.bind(1, customer)
        upsert.bind(2, request.text)
        upsert.bind(3, technician)
        upsert.bind(4, ordinal)
        upsert.bind(5, request.monthKey)
        upsert.bind(6, resolution?.text)
        if let resolution {
            upsert.bind(7, resolution.monthKey)
            upsert.bind(8, resolution.dayNumber - request.dayNumber)
        } else {
            upsert.bind(7, nil as String?)
            upsert.bind(8, nil as Double?)
        }
        try upsert.execute()
    }

    func feedback(customer: Int64, date: CompanyDate, ordinal: Int, score: Int64) throws {
        let upsert = try self.statement(
            """
            INSERT INTO feedback (customer_id, feedback_date, ordinal, month, score) VALUES (?, ?, ?, ?, ?)
            ON CONFLICT (customer_id, feedback_date, ordinal) DO UPDATE SET month = excluded.month, score = excluded.score
            """)
        upsert.bind(1, customer)
        upsert.bind(2, date.text)
        upsert.bind(3, ordinal)
        upsert.bind(4, date.monthKey)
        upsert.bind(5, score)
        try upsert.execute()
    }

    func installation(customer: Int64, request: CompanyDate, ordinal: Int, installed: CompanyDate, technician: Int64?) throws {
        let upsert = try self.statement(
            """
            INSERT INTO installation (customer_id, request_date, ordinal, installed_date, installed_month, days, technician_id)
            VALUES (?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (customer_id, request_date, ordinal) DO UPDATE SET installed_date = excluded.installed_date,
                installed_month = excluded.installed_month, days = excluded.days, technician_id = excluded.technician_id
            """)
        upsert.bind(1, customer)
        upsert.bind(2, request.text)
        upsert.bind(3, ordinal)
        upsert.bind(4, installed.text)
        upsert.bind(5, installed.monthKey)
        upsert.bind(6, installed.dayNumber - request.dayNumber)
        if let technician { upsert.bind(7, technician) } else { upsert.bind(7, nil as String?) }
        try upsert.execute()
    }

    func complaint(id: Int64, customer: Int64, date: CompanyDate, category: String, resolved: CompanyDate?) throws {
        let upsert = try self.statement(
            """
            INSERT INTO complaint (id, customer_id, complaint_date, month, category, resolved_date, resolved_month)
            VALUES (?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id, complaint_date = excluded.complaint_date,
                month = excluded.month, category = excluded.category, resolved_date = excluded.resolved_date,
                resolved_month = excluded.resolved_month
            """)
        upsert.bind(1, id)
        upsert.bind(2, customer)
        upsert.bind(3, date.text)
        upsert.bind(4, date.monthKey)
        upsert.bind(5, category)
        upsert.bind(6, resolved?.text)
        if let resolved { upsert.bind(7, resolved.monthKey) } else { upsert.bind(7, nil as String?) }
        try upsert.execute()
    }

    /// Every row went in as it came.
    func flush() throws {}

    func rebuildRollups(_ kinds: [String]) throws {
        for kind in kinds {
            try self.db.execute(sql: "DELETE FROM company_rollup WHERE kind = ?", arguments: [kind])
            try self.db.execute(sql: "INSERT INTO company_rollup (kind, month, region, item, count, total) " + CompanyRollups.queries[kind]!)
        }
    }
}
