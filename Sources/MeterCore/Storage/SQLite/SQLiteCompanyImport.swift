import Foundation
import GRDB

/// Thrown out of the transaction so it rolls back, carrying the row problems found.
struct ImportFailure: Error {
    var errors: [CompanyDataError]
}

/// One file's import inside its transaction.
struct ImportContext {
    let file: String
    let db: Database
    let progress: (@Sendable (ImportProgress) -> Void)?
    var rows = 0
    var errors: [CompanyDataError] = []
    var line = 0

    init(file: String, db: Database, progress: (@Sendable (ImportProgress) -> Void)?) {
        self.file = file
        self.db = db
        self.progress = progress
    }

    func fail(_ reason: String) -> CompanyDataError {
        CompanyDataError(file: self.file, line: self.line, reason)
    }

    mutating func run(path: String) throws {
        switch self.file {
        case "technicians.csv": try self.technicians(path)
        case "customer_data.csv": try self.customers(path)
        case "meters.csv": try self.meters(path)
        case "concentrators.csv": try self.concentrators(path)
        case "installations.csv": try self.installations(path)
        case "monthly_data.csv": try self.monthly(path)
        case "bills.csv": try self.bills(path)
        case "maintenance_data.csv": try self.maintenance(path)
        case "feedback_data.csv": try self.feedback(path)
        case "complaints.csv": try self.complaints(path)
        default:
            throw CompanyDataError(
                file: self.file, line: 0, "not a company file (expected one of \(CompanyImporter.fileOrder.joined(separator: ", ")))")
        }
        guard self.errors.isEmpty else { throw ImportFailure(errors: self.errors) }
    }

    /// Reads every row, handing each to `body`; row problems are collected, and the file fails at the end.
    mutating func forEachRow(_ path: String, columns: [String], _ body: (inout ImportContext, [String]) throws -> Void) throws {
        var reader = try CSVReader(path: path, columns: columns)
        let report = reader.size > 4 << 20
        var nextReport = 0.1
        while true {
            let fields: [String]
            do {
                guard let next = try reader.next() else { break }
                fields = next
            } catch {
                self.errors.append(error)
                break
            }
            self.line = reader.currentLine
            do {
                try body(&self, fields)
                if self.errors.isEmpty { self.rows += 1 }
            } catch let error as CompanyDataError {
                self.errors.append(error)
                if self.errors.count >= CompanyImporter.maximumErrors { break }
            }
            if report, let progress = self.progress, self.rows & 0xFFFF == 0, reader.progress >= nextReport {
                progress(ImportProgress(file: self.file, rows: self.rows, fraction: reader.progress))
                nextReport = reader.progress + 0.1
            }
        }
        if report, let progress = self.progress, self.errors.isEmpty {
            progress(ImportProgress(file: self.file, rows: self.rows, fraction: 1))
        }
    }

    // MARK: Field parsing

    func integer(_ text: String, _ column: String) throws(CompanyDataError) -> Int64 {
        guard let value = Int64(text.trimmingCharacters(in: .whitespaces)) else {
            throw self.fail("\(column): expected a whole number, got \"\(text)\"")
        }
        return value
    }

    func customerID(_ text: String, known: Set<Int64>?) throws(CompanyDataError) -> Int64 {
        let id = try self.integer(text, "CustomerID")
        guard id > 0 else { throw self.fail("CustomerID: expected a positive number, got \(id)") }
        if let known, !known.contains(id) { throw self.fail("unknown customer \(id) (import customer_data.csv first)") }
        return id
    }

    func number(_ text: String, _ column: String) throws(CompanyDataError) -> Double {
        guard let value = Double(text.trimmingCharacters(in: .whitespaces)), value.isFinite else {
            throw self.fail("\(column): expected a number, got \"\(text)\"")
        }
        return value
    }

    func date(_ text: String, _ column: String) throws(CompanyDataError) -> CompanyDate {
        guard let date = CompanyDate(text.trimmingCharacters(in: .whitespaces)) else {
            throw self.fail("\(column): expected YYYY-MM-DD or YYYY-MM-DD HH:MM:SS, got \"\(text)\"")
        }
        return date
    }

    func optionalDate(_ text: String, _ column: String) throws(CompanyDataError) -> CompanyDate? {
        text.trimmingCharacters(in: .whitespaces).isEmpty ? nil : try self.date(text, column)
    }

    func knownCustomers() throws -> Set<Int64> {
        Set(try Int64.fetchAll(self.db, sql: "SELECT id FROM customer"))
    }

    // MARK: Files

    mutating func technicians(_ path: String) throws {
        let upsert = try RawStatement(
            self.db,
            sql: """
                INSERT INTO technician (id, name) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name
                """)
        var seen = Set<Int64>()
        try self.forEachRow(path, columns: ["TechnicianID", "TechnicianName"]) { context, fields in
            let id = try context.integer(fields[0], "TechnicianID")
            let name = fields[1].trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty else { throw context.fail("TechnicianName: empty") }
            guard seen.insert(id).inserted else { throw context.fail("technician \(id) appears twice") }
            guard context.errors.isEmpty else { return }
            upsert.bind(1, id)
            upsert.bind(2, name)
            try upsert.execute()
        }
    }

    mutating func customers(_ path: String) throws {
        // Customers that have meters of their own (meters.csv) keep them; the rest get MTR-%06d.
        var ownMeters = Set<Int64>()
        for row in try Row.fetchAll(self.db, sql: "SELECT name, customer_id FROM meter WHERE customer_id IS NOT NULL") {
            let customer: Int64 = row["customer_id"]
            if (row["name"] as String) != defaultMeterName(customer: customer) { ownMeters.insert(customer) }
        }
        let upsertCustomer = try RawStatement(
            self.db,
            sql: """
                INSERT INTO customer (id, region, installed_on, installed_month) VALUES (?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET region = excluded.region, installed_on = excluded.installed_on,
                    installed_month = excluded.installed_month
                """)
        let upsertMeter = try RawStatement(
            self.db,
            sql: """
                INSERT INTO meter (name, customer_id, region) VALUES (?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET customer_id = excluded.customer_id, region = excluded.region
                WHERE meter.customer_id IS NULL OR meter.customer_id = excluded.customer_id
                """)
        let updateRegion = try RawStatement(self.db, sql: "UPDATE meter SET region = ? WHERE customer_id = ?")
        var seen = Set<Int64>()
        try self.forEachRow(path, columns: ["CustomerID", "Region", "InstallationDate"]) { context, fields in
            let id = try context.customerID(fields[0], known: nil)
            let region = fields[1].trimmingCharacters(in: .whitespaces)
            guard !region.isEmpty else { throw context.fail("Region: empty") }
            let installed = try context.optionalDate(fields[2], "InstallationDate")
            guard seen.insert(id).inserted else { throw context.fail("customer \(id) appears twice") }
            guard context.errors.isEmpty else { return }
            upsertCustomer.bind(1, id)
            upsertCustomer.bind(2, region)
            upsertCustomer.bind(3, installed?.text)
            if let installed { upsertCustomer.bind(4, installed.monthKey) } else { upsertCustomer.bind(4, nil as String?) }
            try upsertCustomer.execute()
            if ownMeters.contains(id) {
                updateRegion.bind(1, region)
                updateRegion.bind(2, id)
                try updateRegion.execute()
            } else {
                upsertMeter.bind(1, defaultMeterName(customer: id))
                upsertMeter.bind(2, id)
                upsertMeter.bind(3, region)
                try upsertMeter.execute()
            }
        }
        guard self.errors.isEmpty else { return }
        try CompanyRollups.rebuildAll(self.db)
    }

    mutating func meters(_ path: String) throws {
        let regions = Dictionary(
            try Row.fetchAll(self.db, sql: "SELECT id, region FROM customer").map { ($0["id"] as Int64, $0["region"] as String) },
            uniquingKeysWith: { first, _ in first })
        let upsert = try RawStatement(
            self.db,
            sql: """
                INSERT INTO meter (name, customer_id, region) VALUES (?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET customer_id = excluded.customer_id, region = excluded.region
                """)
        var seen = Set<String>()
        var customers = Set<Int64>()
        try self.forEachRow(path, columns: ["MeterID", "CustomerID"]) { context, fields in
            let name = fields[0].trimmingCharacters(in: .whitespaces)
            guard MeterID.isValid(name) else { throw context.fail("MeterID: expected \(MeterID.syntax), got \"\(name)\"") }
            let customer = try context.customerID(fields[1], known: nil)
            guard let region = regions[customer] else { throw context.fail("unknown customer \(customer) (import customer_data.csv first)") }
            guard seen.insert(name).inserted else { throw context.fail("meter \(name) appears twice") }
            guard context.errors.isEmpty else { return }
            customers.insert(customer)
            upsert.bind(1, name)
            upsert.bind(2, customer)
            upsert.bind(3, region)
            try upsert.execute()
        }
        guard self.errors.isEmpty else { return }
        // A default meter the file replaces goes away, unless it already has data (then it stays, as history).
        let dropDefault = try RawStatement(
            self.db,
            sql: """
                DELETE FROM meter WHERE name = ? AND customer_id = ? AND readings_total = 0
                    AND NOT EXISTS (SELECT 1 FROM meter_month WHERE meter_month.meter_id = meter.id)
                """)
        for customer in customers where !seen.contains(defaultMeterName(customer: customer)) {
            dropDefault.bind(1, defaultMeterName(customer: customer))
            dropDefault.bind(2, customer)
            try dropDefault.execute()
        }
    }

    /// The whole concentrator-to-meter assignment: the file replaces what an earlier import said,
    /// so a meter taken off a concentrator's list is no longer accepted from it.
    mutating func concentrators(_ path: String) throws {
        try self.db.execute(sql: "DELETE FROM concentrator_meter")
        let insert = try RawStatement(self.db, sql: "INSERT INTO concentrator_meter (concentrator, meter) VALUES (?, ?)")
        var seen = Set<[String]>()
        try self.forEachRow(path, columns: ["ConcentratorID", "MeterID"]) { context, fields in
            let concentrator = fields[0].trimmingCharacters(in: .whitespaces)
            guard MeterID.isValid(concentrator) else {
                throw context.fail("ConcentratorID: expected \(MeterID.syntax), got \"\(concentrator)\"")
            }
            let meter = fields[1].trimmingCharacters(in: .whitespaces)
            guard MeterID.isValid(meter) else { throw context.fail("MeterID: expected \(MeterID.syntax), got \"\(meter)\"") }
            guard seen.insert([concentrator, meter]).inserted else {
                throw context.fail("meter \(meter) is assigned to concentrator \(concentrator) twice")
            }
            guard context.errors.isEmpty else { return }
            insert.bind(1, concentrator)
            insert.bind(2, meter)
            try insert.execute()
        }
    }

    /// Each customer's meter that monthly rows go to: its `MTR-%06d` if it has it, else its first.
    func meterOfCustomer() throws -> [Int64: Int64] {
        var meters: [Int64: Int64] = [:]
        for row in try Row.fetchAll(self.db, sql: "SELECT id, name, customer_id FROM meter WHERE customer_id IS NOT NULL ORDER BY id") {
            let customer: Int64 = row["customer_id"]
            if (row["name"] as String) == defaultMeterName(customer: customer) || meters[customer] == nil { meters[customer] = row["id"] }
        }
        return meters
    }

    mutating func monthly(_ path: String) throws {
        let meters = try self.meterOfCustomer()
        let upsert = try RawStatement(
            self.db,
            sql: """
                INSERT INTO meter_month (meter_id, month, kwh, revenue, imported_status, imported_kwh, imported_revenue)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (meter_id, month) DO UPDATE SET
                    kwh = meter_month.kwh - COALESCE(meter_month.imported_kwh, 0) + excluded.kwh,
                    revenue = meter_month.revenue - COALESCE(meter_month.imported_revenue, 0) + excluded.revenue,
                    imported_status = excluded.imported_status,
                    imported_kwh = excluded.imported_kwh,
                    imported_revenue = excluded.imported_revenue
                """)
        var seen = Set<Int64>()
        try self.forEachRow(path, columns: ["CustomerID", "Date", "Consumption_kWh", "Revenue_$", "MeterStatus"]) { context, fields in
            let customer = try context.customerID(fields[0], known: nil)
            guard let meter = meters[customer] else { throw context.fail("unknown customer \(customer) (import customer_data.csv first)") }
            let month = try context.date(fields[1], "Date").monthKey
            let kwh = try context.number(fields[2], "Consumption_kWh")
            guard kwh >= 0 else { throw context.fail("Consumption_kWh: must not be negative, got \(fields[2])") }
            let revenue = try context.number(fields[3], "Revenue_$")
            guard let status = MeterHealth(name: fields[4].trimmingCharacters(in: .whitespaces)) else {
                throw context.fail("MeterStatus: expected Good, Fair or Poor, got \"\(fields[4])\"")
            }
            guard seen.insert(customer &* 1_000_000 &+ Int64(month)).inserted else {
                throw context.fail("a second row for customer \(customer) in \(Month(key: month))")
            }
            guard context.errors.isEmpty else { return }
            upsert.bind(1, meter)
            upsert.bind(2, month)
            upsert.bind(3, kwh)
            upsert.bind(4, revenue)
            upsert.bind(5, Int64(status.rawValue))
            upsert.bind(6, kwh)
            upsert.bind(7, revenue)
            try upsert.execute()
        }
    }

    mutating func bills(_ path: String) throws {
        let known = try self.knownCustomers()
        let upsert = try RawStatement(
            self.db,
            sql: """
                INSERT INTO bill (customer_id, month, amount, paid) VALUES (?, ?, ?, ?)
                ON CONFLICT (customer_id, month) DO UPDATE SET amount = excluded.amount, paid = excluded.paid
                """)
        var seen = Set<Int64>()
        try self.forEachRow(path, columns: ["CustomerID", "Month", "Amount_$", "Status"]) { context, fields in
            let customer = try context.customerID(fields[0], known: known)
            let text = fields[1].trimmingCharacters(in: .whitespaces)
            guard let month = Month(text)?.key ?? CompanyDate(text)?.monthKey else {
                throw context.fail("Month: expected YYYY-MM, got \"\(fields[1])\"")
            }
            let amount = try context.number(fields[2], "Amount_$")
            let paid: Int
            switch fields[3].trimmingCharacters(in: .whitespaces).lowercased() {
            case "paid": paid = 1
            case "unpaid": paid = 0
            default: throw context.fail("Status: expected paid or unpaid, got \"\(fields[3])\"")
            }
            guard seen.insert(customer &* 1_000_000 &+ Int64(month)).inserted else {
                throw context.fail("a second bill for customer \(customer) in \(Month(key: month))")
            }
            guard context.errors.isEmpty else { return }
            upsert.bind(1, customer)
            upsert.bind(2, month)
            upsert.bind(3, amount)
            upsert.bind(4, paid)
            try upsert.execute()
        }
        guard self.errors.isEmpty else { return }
        try CompanyRollups.rebuild(["bill"], self.db)
    }

    mutating func maintenance(_ path: String) throws {
        let known = try self.knownCustomers()
        let upsert = try RawStatement(
            self.db,
            sql: """
                INSERT INTO maintenance (customer_id, request_date, technician_id, ordinal, request_month,
                                         resolution_date, resolution_month, resolution_days)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (customer_id, request_date, technician_id, ordinal) DO UPDATE SET
                    request_month = excluded.request_month, resolution_date = excluded.resolution_date,
                    resolution_month = excluded.resolution_month, resolution_days = excluded.resolution_days
                """)
        var ordinals: [String: Int] = [:]
        try self.forEachRow(path, columns: ["CustomerID", "RequestDate", "ResolutionDate", "TechnicianID"]) { context, fields in
            let customer = try context.customerID(fields[0], known: known)
            let request = try context.date(fields[1], "RequestDate")
            let resolution = try context.optionalDate(fields[2], "ResolutionDate")
            if let resolution, resolution < request { throw context.fail("ResolutionDate \(resolution.text) is before RequestDate \(request.text)") }
            let technician = try context.integer(fields[3], "TechnicianID")
            let key = "\(customer)|\(request.text)|\(technician)"
            let ordinal = ordinals[key, default: 0]
            ordinals[key] = ordinal + 1
            guard context.errors.isEmpty else { return }
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
        guard self.errors.isEmpty else { return }
        try CompanyRollups.rebuild(["maintenance_received", "maintenance_resolved"], self.db)
    }

    mutating func feedback(_ path: String) throws {
        let known = try self.knownCustomers()
        let upsert = try RawStatement(
            self.db,
            sql: """
                INSERT INTO feedback (customer_id, feedback_date, ordinal, month, score) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (customer_id, feedback_date, ordinal) DO UPDATE SET month = excluded.month, score = excluded.score
                """)
        var ordinals: [String: Int] = [:]
        try self.forEachRow(path, columns: ["CustomerID", "FeedbackDate", "SatisfactionScore"]) { context, fields in
            let customer = try context.customerID(fields[0], known: known)
            let date = try context.date(fields[1], "FeedbackDate")
            let score = try context.integer(fields[2], "SatisfactionScore")
            guard (1...5).contains(score) else { throw context.fail("SatisfactionScore: expected 1 to 5, got \(score)") }
            let key = "\(customer)|\(date.text)"
            let ordinal = ordinals[key, default: 0]
            ordinals[key] = ordinal + 1
            guard context.errors.isEmpty else { return }
            upsert.bind(1, customer)
            upsert.bind(2, date.text)
            upsert.bind(3, ordinal)
            upsert.bind(4, date.monthKey)
            upsert.bind(5, score)
            try upsert.execute()
        }
        guard self.errors.isEmpty else { return }
        try CompanyRollups.rebuild(["feedback"], self.db)
    }

    mutating func installations(_ path: String) throws {
        let known = try self.knownCustomers()
        let upsert = try RawStatement(
            self.db,
            sql: """
                INSERT INTO installation (customer_id, request_date, ordinal, installed_date, installed_month, days, technician_id)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (customer_id, request_date, ordinal) DO UPDATE SET installed_date = excluded.installed_date,
                    installed_month = excluded.installed_month, days = excluded.days, technician_id = excluded.technician_id
                """)
        var ordinals: [String: Int] = [:]
        try self.forEachRow(path, columns: ["CustomerID", "RequestDate", "InstallationDate", "TechnicianID"]) { context, fields in
            let customer = try context.customerID(fields[0], known: known)
            let request = try context.date(fields[1], "RequestDate")
            let installed = try context.date(fields[2], "InstallationDate")
            guard request <= installed else { throw context.fail("InstallationDate \(installed.text) is before RequestDate \(request.text)") }
            let technicianText = fields[3].trimmingCharacters(in: .whitespaces)
            let technician = technicianText.isEmpty ? nil : try context.integer(technicianText, "TechnicianID")
            let key = "\(customer)|\(request.text)"
            let ordinal = ordinals[key, default: 0]
            ordinals[key] = ordinal + 1
            guard context.errors.isEmpty else { return }
            upsert.bind(1, customer)
            upsert.bind(2, request.text)
            upsert.bind(3, ordinal)
            upsert.bind(4, installed.text)
            upsert.bind(5, installed.monthKey)
            upsert.bind(6, installed.dayNumber - request.dayNumber)
            if let technician { upsert.bind(7, technician) } else { upsert.bind(7, nil as String?) }
            try upsert.execute()
        }
        guard self.errors.isEmpty else { return }
        try CompanyRollups.rebuild(["installation"], self.db)
    }

    mutating func complaints(_ path: String) throws {
        let known = try self.knownCustomers()
        let upsert = try RawStatement(
            self.db,
            sql: """
                INSERT INTO complaint (id, customer_id, complaint_date, month, category, resolved_date, resolved_month)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id, complaint_date = excluded.complaint_date,
                    month = excluded.month, category = excluded.category, resolved_date = excluded.resolved_date,
                    resolved_month = excluded.resolved_month
                """)
        var seen = Set<Int64>()
        try self.forEachRow(path, columns: ["ComplaintID", "CustomerID", "Date", "Category", "ResolvedDate"]) { context, fields in
            let id = try context.integer(fields[0], "ComplaintID")
            let customer = try context.customerID(fields[1], known: known)
            let date = try context.date(fields[2], "Date")
            let category = fields[3].trimmingCharacters(in: .whitespaces)
            let resolved = try context.optionalDate(fields[4], "ResolvedDate")
            if let resolved, resolved < date { throw context.fail("ResolvedDate \(resolved.text) is before Date \(date.text)") }
            guard seen.insert(id).inserted else { throw context.fail("complaint \(id) appears twice") }
            guard context.errors.isEmpty else { return }
            upsert.bind(1, id)
            upsert.bind(2, customer)
            upsert.bind(3, date.text)
            upsert.bind(4, date.monthKey)
            upsert.bind(5, category)
            upsert.bind(6, resolved?.text)
            if let resolved { upsert.bind(7, resolved.monthKey) } else { upsert.bind(7, nil as String?) }
            try upsert.execute()
        }
        guard self.errors.isEmpty else { return }
        try CompanyRollups.rebuild(["complaint_received", "complaint_resolved"], self.db)
    }
}

/// The monthly counts of company events the KPIs read (`company_rollup`), rebuilt from the event
/// tables in the transaction of the import that changed them. Plain SQL that PostgreSQL also runs.
enum CompanyRollups {
    static let queries: [String: String] = [
        "installed": """
        SELECT 'installed', COALESCE(installed_month, 0), region, 0, COUNT(*), 0 FROM customer
        GROUP BY COALESCE(installed_month, 0), region
        """,
        "bill": """
        SELECT 'bill', b.month, COALESCE(c.region, 'Unassigned'), b.paid, COUNT(*), SUM(b.amount)
        FROM bill b LEFT JOIN customer c ON c.id = b.customer_id
        GROUP BY b.month, COALESCE(c.region, 'Unassigned'), b.paid
        """,
        "feedback": """
        SELECT 'feedback', f.month, COALESCE(c.region, 'Unassigned'), f.score, COUNT(*), SUM(f.score)
        FROM feedback f LEFT JOIN customer c ON c.id = f.customer_id
        GROUP BY f.month, COALESCE(c.region, 'Unassigned'), f.score
        """,
        "complaint_received": """
        SELECT 'complaint_received', k.month, COALESCE(c.region, 'Unassigned'), 0, COUNT(*), 0
        FROM complaint k LEFT JOIN customer c ON c.id = k.customer_id
        GROUP BY k.month, COALESCE(c.region, 'Unassigned')
        """,
        "complaint_resolved": """
        SELECT 'complaint_resolved', k.resolved_month, COALESCE(c.region, 'Unassigned'), 0, COUNT(*), 0
        FROM complaint k LEFT JOIN customer c ON c.id = k.customer_id WHERE k.resolved_month IS NOT NULL
        GROUP BY k.resolved_month, COALESCE(c.region, 'Unassigned')
        """,
        "installation": """
        SELECT 'installation', i.installed_month, COALESCE(c.region, 'Unassigned'), COALESCE(i.technician_id, 0), COUNT(*), SUM(i.days)
        FROM installation i LEFT JOIN customer c ON c.id = i.customer_id
        GROUP BY i.installed_month, COALESCE(c.region, 'Unassigned'), COALESCE(i.technician_id, 0)
        """,
        "maintenance_received": """
        SELECT 'maintenance_received', m.request_month, COALESCE(c.region, 'Unassigned'), m.technician_id, COUNT(*), 0
        FROM maintenance m LEFT JOIN customer c ON c.id = m.customer_id
        GROUP BY m.request_month, COALESCE(c.region, 'Unassigned'), m.technician_id
        """,
        "maintenance_resolved": """
        SELECT 'maintenance_resolved', m.resolution_month, COALESCE(c.region, 'Unassigned'), m.technician_id, COUNT(*), SUM(m.resolution_days)
        FROM maintenance m LEFT JOIN customer c ON c.id = m.customer_id WHERE m.resolution_month IS NOT NULL
        GROUP BY m.resolution_month, COALESCE(c.region, 'Unassigned'), m.technician_id
        """,
    ]

    static func rebuild(_ kinds: [String], _ db: Database) throws {
        for kind in kinds {
            try db.execute(sql: "DELETE FROM company_rollup WHERE kind = ?", arguments: [kind])
            try db.execute(sql: "INSERT INTO company_rollup (kind, month, region, item, count, total) " + self.queries[kind]!)
        }
    }

    /// After customers change, every rollup (they are all by the customer's region).
    static func rebuildAll(_ db: Database) throws {
        try self.rebuild(self.queries.keys.sorted(), db)
    }
}
