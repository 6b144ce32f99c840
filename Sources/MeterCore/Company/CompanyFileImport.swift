import Foundation

/// Thrown out of the transaction so it rolls back, carrying the row problems found.
struct ImportFailure: Error {
    var errors: [CompanyDataError]
}

/// What a store gives and takes while one company file is imported in one transaction of its own:
/// the lookups a file's rows are checked against, and the rows once they passed. A store may write
/// each row at once or buffer them; ``flush()`` writes what it holds, and the transaction rolls
/// back if any row failed, so nothing of a bad file stays.
protocol CompanyImportSink: AnyObject {
    func knownCustomers() throws -> Set<Int64>
    func customerRegions() throws -> [Int64: String]
    /// Customers that have meters of their own (meters.csv), not only their `MTR-%06d`.
    func customersWithOwnMeters() throws -> Set<Int64>
    /// Each customer's meter that monthly rows go to: its `MTR-%06d` if it has it, else its first.
    func meterOfCustomer() throws -> [Int64: Int64]

    func technician(id: Int64, name: String) throws
    /// The customer's row, and its region on its meters (their own, or its `MTR-%06d` created if missing).
    func customer(id: Int64, region: String, installed: CompanyDate?, hasOwnMeters: Bool) throws
    func meter(name: String, customer: Int64, region: String) throws
    /// Drops a customer's default meter that meters.csv replaced, unless it already has data.
    func dropReplacedDefaultMeter(customer: Int64) throws
    /// Forgets every concentrator assignment: concentrators.csv replaces them all.
    func clearConcentrators() throws
    func concentratorMeter(concentrator: String, meter: String) throws
    func monthly(meterID: Int64, month: Int, kwh: Double, revenue: Double, status: MeterHealth) throws
    func bill(customer: Int64, month: Int, amount: Double, paid: Bool) throws
    func maintenance(customer: Int64, request: CompanyDate, technician: Int64, ordinal: Int, resolution: CompanyDate?) throws
    func feedback(customer: Int64, date: CompanyDate, ordinal: Int, score: Int64) throws
    func installation(customer: Int64, request: CompanyDate, ordinal: Int, installed: CompanyDate, technician: Int64?) throws
    func complaint(id: Int64, customer: Int64, date: CompanyDate, category: String, resolved: CompanyDate?) throws
    /// Writes the rows still buffered.
    func flush() throws
    /// Rebuilds these kinds of ``CompanyRollups`` from the event tables.
    func rebuildRollups(_ kinds: [String]) throws
}

/// One company file's import: reads and checks every row, hands the good ones to a store's
/// ``CompanyImportSink``; the same checks and messages whatever the store.
struct CompanyFileImport {
    let file: String
    let sink: any CompanyImportSink
    let progress: (@Sendable (ImportProgress) -> Void)?
    var rows = 0
    var errors: [CompanyDataError] = []
    var line = 0

    init(file: String, sink: any CompanyImportSink, progress: (@Sendable (ImportProgress) -> Void)?) {
        self.file = file
        self.sink = sink
        self.progress = progress
    }

    func fail(_ reason: String) -> CompanyDataError {
        CompanyDataError(file: self.file, line: self.line, reason)
    }

    /// Imports the file; throws ``ImportFailure`` with every row problem (the caller rolls back).
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

    /// Reads every row, handing each to `body`; row problems are collected, and the file fails at
    /// the end. Rows go to the sink only while no problem was found; what it buffered is flushed.
    mutating func forEachRow(_ path: String, columns: [String], _ body: (inout CompanyFileImport, [String]) throws -> Void) throws {
        var reader = try CSVReader(path: path, columns: columns)
        let report = reader.size > 4 << 20
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
            // Every 65,536 rows: through a running meterd this is also the writer's sign of life
            // (``WriterAccess/reportProgress()``), which the watchdog and `/healthz` go by.
            if report, let progress = self.progress, self.rows & 0xFFFF == 0, self.errors.isEmpty {
                progress(ImportProgress(file: self.file, rows: self.rows, fraction: reader.progress))
            }
        }
        if self.errors.isEmpty { try self.sink.flush() }
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

    /// Larger than any meter or bill records; sums of values up to it stay finite and exact
    /// enough, where 1e308 kWh would make every total infinite (null in the JSON).
    static let largestAmount = 1e12

    func number(_ text: String, _ column: String) throws(CompanyDataError) -> Double {
        guard let value = Double(text.trimmingCharacters(in: .whitespaces)), value.isFinite else {
            throw self.fail("\(column): expected a number, got \"\(text)\"")
        }
        guard abs(value) <= Self.largestAmount else {
            throw self.fail("\(column): \(text) is out of range (at most 1e12 either way)")
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

    // MARK: Files

    mutating func technicians(_ path: String) throws {
        var seen = Set<Int64>()
        try self.forEachRow(path, columns: ["TechnicianID", "TechnicianName"]) { context, fields in
            let id = try context.integer(fields[0], "TechnicianID")
            let name = fields[1].trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty else { throw context.fail("TechnicianName: empty") }
            guard seen.insert(id).inserted else { throw context.fail("technician \(id) appears twice") }
            guard context.errors.isEmpty else { return }
            try context.sink.technician(id: id, name: name)
        }
    }

    mutating func customers(_ path: String) throws {
        // Customers that have meters of their own (meters.csv) keep them; the rest get MTR-%06d.
        let ownMeters = try self.sink.customersWithOwnMeters()
        var seen = Set<Int64>()
        try self.forEachRow(path, columns: ["CustomerID", "Region", "InstallationDate"]) { context, fields in
            let id = try context.customerID(fields[0], known: nil)
            let region = fields[1].trimmingCharacters(in: .whitespaces)
            guard !region.isEmpty else { throw context.fail("Region: empty") }
            // What the API, the dashboard and meterctl can ask for by name.
            guard region.count <= DashboardRoutes.maximumRegionLength else {
                throw context.fail("Region: longer than \(DashboardRoutes.maximumRegionLength) characters")
            }
            guard !region.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw context.fail("Region: control characters (a line break or tab) in \"\(region.debugDescription.dropFirst().dropLast())\"")
            }
            let installed = try context.optionalDate(fields[2], "InstallationDate")
            guard seen.insert(id).inserted else { throw context.fail("customer \(id) appears twice") }
            guard context.errors.isEmpty else { return }
            try context.sink.customer(id: id, region: region, installed: installed, hasOwnMeters: ownMeters.contains(id))
        }
        guard self.errors.isEmpty else { return }
        try self.sink.rebuildRollups(CompanyRollups.queries.keys.sorted())
    }

    mutating func meters(_ path: String) throws {
        let regions = try self.sink.customerRegions()
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
            try context.sink.meter(name: name, customer: customer, region: region)
        }
        guard self.errors.isEmpty else { return }
        // A default meter the file replaces goes away, unless it already has data (then it stays, as history).
        for customer in customers.sorted() where !seen.contains(defaultMeterName(customer: customer)) {
            try self.sink.dropReplacedDefaultMeter(customer: customer)
        }
        try self.sink.flush()
    }

    /// The whole concentrator-to-meter assignment: the file replaces what an earlier import said,
    /// so a meter taken off a concentrator's list is no longer accepted from it.
    mutating func concentrators(_ path: String) throws {
        try self.sink.clearConcentrators()
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
            try context.sink.concentratorMeter(concentrator: concentrator, meter: meter)
        }
    }

    mutating func monthly(_ path: String) throws {
        let meters = try self.sink.meterOfCustomer()
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
            try context.sink.monthly(meterID: meter, month: month, kwh: kwh, revenue: revenue, status: status)
        }
    }

    mutating func bills(_ path: String) throws {
        let known = try self.sink.knownCustomers()
        var seen = Set<Int64>()
        try self.forEachRow(path, columns: ["CustomerID", "Month", "Amount_$", "Status"]) { context, fields in
            let customer = try context.customerID(fields[0], known: known)
            let text = fields[1].trimmingCharacters(in: .whitespaces)
            guard let month = Month(text)?.key ?? CompanyDate(text)?.monthKey else {
                throw context.fail("Month: expected YYYY-MM, got \"\(fields[1])\"")
            }
            let amount = try context.number(fields[2], "Amount_$")
            let paid: Bool
            switch fields[3].trimmingCharacters(in: .whitespaces).lowercased() {
            case "paid": paid = true
            case "unpaid": paid = false
            default: throw context.fail("Status: expected paid or unpaid, got \"\(fields[3])\"")
            }
            guard seen.insert(customer &* 1_000_000 &+ Int64(month)).inserted else {
                throw context.fail("a second bill for customer \(customer) in \(Month(key: month))")
            }
            guard context.errors.isEmpty else { return }
            try context.sink.bill(customer: customer, month: month, amount: amount, paid: paid)
        }
        guard self.errors.isEmpty else { return }
        try self.sink.rebuildRollups(["bill"])
    }

    mutating func maintenance(_ path: String) throws {
        let known = try self.sink.knownCustomers()
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
            try context.sink.maintenance(customer: customer, request: request, technician: technician, ordinal: ordinal, resolution: resolution)
        }
        guard self.errors.isEmpty else { return }
        try self.sink.rebuildRollups(["maintenance_received", "maintenance_resolved"])
    }

    mutating func feedback(_ path: String) throws {
        let known = try self.sink.knownCustomers()
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
            try context.sink.feedback(customer: customer, date: date, ordinal: ordinal, score: score)
        }
        guard self.errors.isEmpty else { return }
        try self.sink.rebuildRollups(["feedback"])
    }

    mutating func installations(_ path: String) throws {
        let known = try self.sink.knownCustomers()
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
            try context.sink.installation(customer: customer, request: request, ordinal: ordinal, installed: installed, technician: technician)
        }
        guard self.errors.isEmpty else { return }
        try self.sink.rebuildRollups(["installation"])
    }

    mutating func complaints(_ path: String) throws {
        let known = try self.sink.knownCustomers()
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
            try context.sink.complaint(id: id, customer: customer, date: date, category: category, resolved: resolved)
        }
        guard self.errors.isEmpty else { return }
        try self.sink.rebuildRollups(["complaint_received", "complaint_resolved"])
    }

    /// Imports one file by its name (which says what it holds) in one transaction: `inTransaction`
    /// opens it, hands its body a sink writing into it, commits what the body returns and rolls
    /// back what it throws.
    static func importFile(
        _ path: String, progress: (@Sendable (ImportProgress) -> Void)?,
        inTransaction: (_ body: (any CompanyImportSink) throws -> Int) throws -> Int
    ) -> FileImportResult {
        let name = (path as NSString).lastPathComponent
        let start = ContinuousClock.now
        func seconds() -> Double { (ContinuousClock.now - start).seconds }
        do {
            let rows = try inTransaction { sink in
                var context = CompanyFileImport(file: name, sink: sink, progress: progress)
                try context.run(path: path)
                return context.rows
            }
            return FileImportResult(file: name, rows: rows, errors: [], seconds: seconds())
        } catch let failure as ImportFailure {
            return FileImportResult(file: name, rows: 0, errors: failure.errors, seconds: seconds())
        } catch let error as CompanyDataError {
            return FileImportResult(file: name, rows: 0, errors: [error], seconds: seconds())
        } catch {
            return FileImportResult(file: name, rows: 0, errors: [CompanyDataError(file: name, line: 0, "\(error)")], seconds: seconds())
        }
    }
}

/// How an imported monthly row lands on a meter-month that may hold one already (both stores'
/// SQL): the earlier import's share is replaced, live readings' share kept.
enum ImportedMonthSQL {
    static let onConflict = """
        ON CONFLICT (meter_id, month) DO UPDATE SET
            kwh = meter_month.kwh - COALESCE(meter_month.imported_kwh, 0) + excluded.kwh,
            revenue = meter_month.revenue - COALESCE(meter_month.imported_revenue, 0) + excluded.revenue,
            imported_status = excluded.imported_status,
            imported_kwh = excluded.imported_kwh,
            imported_revenue = excluded.imported_revenue
        """
}
