import Foundation
import PostgresNIO

/// PostgreSQL's side of a company import: rows are buffered per table and written
/// ``batchRows`` at a time as arrays unnested server-side, one statement per table and batch, in
/// the file's transaction on the writer's connection. A 2.4-million-row `monthly_data.csv` is
/// then 240 round trips, not 2.4 million. Nullable columns travel with the sentinels of
/// ``PostgreSQLCommitStatement`` (PostgresNIO's arrays carry no NULL elements): the empty string,
/// ``PostgreSQLCommitStatement/nullInteger`` and NaN.
final class PostgreSQLCompanyImportSink: CompanyImportSink {
    /// Rows buffered before they are written.
    static let batchRows = 10_000

    private let backend: PostgreSQLIngestBackend
    private var buffered = 0

    private var technicians = (ids: [Int64](), names: [String]())
    private var customers = (ids: [Int64](), regions: [String](), installedOn: [String](), installedMonths: [Int64]())
    /// Customers' default meters to create, or their region to follow the customer's.
    private var defaultMeters = (customers: [Int64](), names: [String](), regions: [String]())
    /// Customers with meters of their own, whose meters take the customer's region.
    private var regionUpdates = (customers: [Int64](), regions: [String]())
    private var meters = (names: [String](), customers: [Int64](), regions: [String]())
    private var concentrators = (concentrators: [String](), meters: [String]())
    private var monthly = (meters: [Int64](), months: [Int64](), kwh: [Double](), revenue: [Double](), statuses: [Int64]())
    private var bills = (customers: [Int64](), months: [Int64](), amounts: [Double](), paid: [Int64]())
    private var maintenance = (
        customers: [Int64](), requests: [String](), technicians: [Int64](), ordinals: [Int64](), requestMonths: [Int64](),
        resolutions: [String](), resolutionMonths: [Int64](), resolutionDays: [Double]()
    )
    private var feedback = (customers: [Int64](), dates: [String](), ordinals: [Int64](), months: [Int64](), scores: [Int64]())
    private var installations = (
        customers: [Int64](), requests: [String](), ordinals: [Int64](), installed: [String](), months: [Int64](), days: [Double](),
        technicians: [Int64]()
    )
    private var complaints = (
        ids: [Int64](), customers: [Int64](), dates: [String](), months: [Int64](), categories: [String](), resolved: [String](),
        resolvedMonths: [Int64]()
    )

    init(backend: PostgreSQLIngestBackend) {
        self.backend = backend
    }

    /// Imports one file in one transaction on the writer's connection.
    static func importFile(_ path: String, backend: PostgreSQLIngestBackend, progress: (@Sendable (ImportProgress) -> Void)?) -> FileImportResult {
        CompanyFileImport.importFile(path, progress: progress) { body in
            try backend.inTransaction("a company import") {
                let result = try body(PostgreSQLCompanyImportSink(backend: backend))
                // Other nodes' commit feeds see this and load their meters and KPI stores again.
                _ = try backend.run(
                    """
                    INSERT INTO store_setting (name, value) VALUES ('company_data_version', '1')
                    ON CONFLICT (name) DO UPDATE SET value = (store_setting.value::bigint + 1)::text
                    """, "recording the company data change")
                return result
            }
        }
    }

    private static let null = PostgreSQLCommitStatement.nullInteger

    private func text(_ value: String) -> String { PostgreSQLCommitStatement.text(value) }

    /// Counts one buffered row and writes every buffer once there are ``batchRows``.
    private func added() throws {
        self.buffered += 1
        if self.buffered >= Self.batchRows { try self.flush() }
    }

    // MARK: Lookups

    func knownCustomers() throws -> Set<Int64> {
        Set(try self.backend.run("SELECT id FROM customer", "reading the customers").map { try $0.decode(Int64.self) })
    }

    func customerRegions() throws -> [Int64: String] {
        var regions: [Int64: String] = [:]
        for row in try self.backend.run("SELECT id, region FROM customer", "reading the customers' regions") {
            let (id, region) = try row.decode((Int64, String).self)
            regions[id] = region
        }
        return regions
    }

    func customersWithOwnMeters() throws -> Set<Int64> {
        var own = Set<Int64>()
        for row in try self.backend.run("SELECT name, customer_id FROM meter WHERE customer_id IS NOT NULL", "reading the customers' meters") {
            let (name, customer) = try row.decode((String, Int64).self)
            if name != defaultMeterName(customer: customer) { own.insert(customer) }
        }
        return own
    }

    func meterOfCustomer() throws -> [Int64: Int64] {
        var meters: [Int64: Int64] = [:]
        for row in try self.backend.run(
            "SELECT id, name, customer_id FROM meter WHERE customer_id IS NOT NULL ORDER BY id", "reading the customers' meters")
        {
            let (id, name, customer) = try row.decode((Int64, String, Int64).self)
            if name == defaultMeterName(customer: customer) || meters[customer] == nil { meters[customer] = id }
        }
        return meters
    }

    // MARK: Rows

    func technician(id: Int64, name: String) throws {
        self.technicians.ids.append(id)
        self.technicians.names.append(self.text(name))
        try self.added()
    }

    func customer(id: Int64, region: String, installed: CompanyDate?, hasOwnMeters: Bool) throws {
        let region = self.text(region)
        self.customers.ids.append(id)
        self.customers.regions.append(region)
        self.customers.installedOn.append(installed?.text ?? "")
        self.customers.installedMonths.append(installed.map { Int64($0.monthKey) } ?? Self.null)
        if hasOwnMeters {
            self.regionUpdates.customers.append(id)
            self.regionUpdates.regions.append(region)
        } else {
            self.defaultMeters.customers.append(id)
            self.defaultMeters.names.append(defaultMeterName(customer: id))
            self.defaultMeters.regions.append(region)
        }
        try self.added()
    }

    func meter(name: String, customer: Int64, region: String) throws {
        self.meters.names.append(name)
        self.meters.customers.append(customer)
        self.meters.regions.append(self.text(region))
        try self.added()
    }

    func dropReplacedDefaultMeter(customer: Int64) throws {
        try self.flush()
        let placeholder = defaultMeterName(customer: customer)
        // A default meter that never reported holds only imported months: they move to the
        // customer's first own meter (merged as a re-import would), so the placeholder can go.
        try self.backend.run(
            """
            WITH source AS (
                SELECT id FROM meter WHERE name = \(placeholder) AND customer_id = \(customer) AND readings_total = 0
            ), target AS (
                SELECT id FROM meter WHERE customer_id = \(customer) AND name <> \(placeholder) ORDER BY id LIMIT 1
            ), moved AS (
                DELETE FROM meter_month USING source, target
                WHERE meter_month.meter_id = source.id AND imported_status IS NOT NULL AND readings = 0 AND estimated = 0
                RETURNING target.id AS meter_id, month, imported_kwh, imported_revenue, imported_status
            )
            INSERT INTO meter_month (meter_id, month, kwh, revenue, imported_status, imported_kwh, imported_revenue)
            SELECT meter_id, month, imported_kwh, imported_revenue, imported_status, imported_kwh, imported_revenue FROM moved
            \(unescaped: ImportedMonthSQL.onConflict)
            """, "moving a replaced default meter's imported months")
        try self.backend.run(
            """
            DELETE FROM meter WHERE name = \(defaultMeterName(customer: customer)) AND customer_id = \(customer) AND readings_total = 0
                AND NOT EXISTS (SELECT 1 FROM meter_month WHERE meter_month.meter_id = meter.id)
            """, "dropping a replaced default meter")
    }

    func clearConcentrators() throws {
        try self.backend.run("DELETE FROM concentrator_meter", "clearing the concentrator assignments")
    }

    func concentratorMeter(concentrator: String, meter: String) throws {
        self.concentrators.concentrators.append(concentrator)
        self.concentrators.meters.append(meter)
        try self.added()
    }

    func monthly(meterID: Int64, month: Int, kwh: Double, revenue: Double, status: MeterHealth) throws {
        self.monthly.meters.append(meterID)
        self.monthly.months.append(Int64(month))
        self.monthly.kwh.append(kwh)
        self.monthly.revenue.append(revenue)
        self.monthly.statuses.append(Int64(status.rawValue))
        try self.added()
    }

    func bill(customer: Int64, month: Int, amount: Double, paid: Bool) throws {
        self.bills.customers.append(customer)
        self.bills.months.append(Int64(month))
        self.bills.amounts.append(amount)
        self.bills.paid.append(paid ? 1 : 0)
        try self.added()
    }

    func maintenance(customer: Int64, request: CompanyDate, technician: Int64, ordinal: Int, resolution: CompanyDate?) throws {
        self.maintenance.customers.append(customer)
        self.maintenance.requests.append(request.text)
        self.maintenance.technicians.append(technician)
        self.maintenance.ordinals.append(Int64(ordinal))
        self.maintenance.requestMonths.append(Int64(request.monthKey))
        self.maintenance.resolutions.append(resolution?.text ?? "")
        self.maintenance.resolutionMonths.append(resolution.map { Int64($0.monthKey) } ?? Self.null)
        self.maintenance.resolutionDays.append(resolution.map { Double($0.dayNumber - request.dayNumber) } ?? .nan)
        try self.added()
    }

    func feedback(customer: Int64, date: CompanyDate, ordinal: Int, score: Int64) throws {
        self.feedback.customers.append(customer)
        self.feedback.dates.append(date.text)
        self.feedback.ordinals.append(Int64(ordinal))
        self.feedback.months.append(Int64(date.monthKey))
        self.feedback.scores.append(score)
        try self.added()
    }

    func installation(customer: Int64, request: CompanyDate, ordinal: Int, installed: CompanyDate, technician: Int64?) throws {
        self.installations.customers.append(customer)
        self.installations.requests.append(request.text)
        self.installations.ordinals.append(Int64(ordinal))
        self.installations.installed.append(installed.text)
        self.installations.months.append(Int64(installed.monthKey))
        self.installations.days.append(Double(installed.dayNumber - request.dayNumber))
        self.installations.technicians.append(technician ?? Self.null)
        try self.added()
    }

    func complaint(id: Int64, customer: Int64, date: CompanyDate, category: String, resolved: CompanyDate?) throws {
        self.complaints.ids.append(id)
        self.complaints.customers.append(customer)
        self.complaints.dates.append(date.text)
        self.complaints.months.append(Int64(date.monthKey))
        self.complaints.categories.append(self.text(category))
        self.complaints.resolved.append(resolved?.text ?? "")
        self.complaints.resolvedMonths.append(resolved.map { Int64($0.monthKey) } ?? Self.null)
        try self.added()
    }

    // MARK: Writing

    /// Writes every buffer, customers before the meters that refer to them.
    func flush() throws {
        let null = Self.null
        if !self.technicians.ids.isEmpty {
            let t = self.technicians
            try self.backend.run(
                """
                INSERT INTO technician (id, name) SELECT * FROM unnest(\(t.ids), \(t.names))
                ON CONFLICT (id) DO UPDATE SET name = excluded.name
                """, "importing technicians")
            self.technicians = ([], [])
        }
        if !self.customers.ids.isEmpty {
            let c = self.customers
            try self.backend.run(
                """
                INSERT INTO customer (id, region, installed_on, installed_month)
                SELECT id, region, NULLIF(installed_on, ''), NULLIF(installed_month, \(null))
                FROM unnest(\(c.ids), \(c.regions), \(c.installedOn), \(c.installedMonths)) AS u(id, region, installed_on, installed_month)
                ON CONFLICT (id) DO UPDATE SET region = excluded.region, installed_on = excluded.installed_on,
                    installed_month = excluded.installed_month
                """, "importing customers")
            self.customers = ([], [], [], [])
        }
        if !self.defaultMeters.customers.isEmpty {
            let d = self.defaultMeters
            try self.backend.run(
                """
                INSERT INTO meter (name, customer_id, region) SELECT * FROM unnest(\(d.names), \(d.customers), \(d.regions))
                ON CONFLICT (name) DO UPDATE SET customer_id = excluded.customer_id, region = excluded.region
                WHERE meter.customer_id IS NULL OR meter.customer_id = excluded.customer_id
                """, "importing the customers' meters")
            self.defaultMeters = ([], [], [])
        }
        if !self.regionUpdates.customers.isEmpty {
            let r = self.regionUpdates
            try self.backend.run(
                """
                UPDATE meter SET region = u.region FROM unnest(\(r.customers), \(r.regions)) AS u(customer_id, region)
                WHERE meter.customer_id = u.customer_id
                """, "moving meters to their customers' regions")
            self.regionUpdates = ([], [])
        }
        if !self.meters.names.isEmpty {
            let m = self.meters
            try self.backend.run(
                """
                INSERT INTO meter (name, customer_id, region) SELECT * FROM unnest(\(m.names), \(m.customers), \(m.regions))
                ON CONFLICT (name) DO UPDATE SET customer_id = excluded.customer_id, region = excluded.region
                """, "importing meters")
            self.meters = ([], [], [])
        }
        if !self.concentrators.meters.isEmpty {
            let c = self.concentrators
            try self.backend.run(
                "INSERT INTO concentrator_meter (concentrator, meter) SELECT * FROM unnest(\(c.concentrators), \(c.meters))",
                "importing concentrator assignments")
            self.concentrators = ([], [])
        }
        if !self.monthly.meters.isEmpty {
            let m = self.monthly
            try self.backend.run(
                """
                INSERT INTO meter_month (meter_id, month, kwh, revenue, imported_status, imported_kwh, imported_revenue)
                SELECT meter_id, month, kwh, revenue, status, kwh, revenue
                FROM unnest(\(m.meters), \(m.months), \(m.kwh), \(m.revenue), \(m.statuses)) AS u(meter_id, month, kwh, revenue, status)
                \(unescaped: ImportedMonthSQL.onConflict)
                """, "importing monthly data")
            self.monthly = ([], [], [], [], [])
        }
        if !self.bills.customers.isEmpty {
            let b = self.bills
            try self.backend.run(
                """
                INSERT INTO bill (customer_id, month, amount, paid)
                SELECT customer_id, month, amount, paid = 1
                FROM unnest(\(b.customers), \(b.months), \(b.amounts), \(b.paid)) AS u(customer_id, month, amount, paid)
                ON CONFLICT (customer_id, month) DO UPDATE SET amount = excluded.amount, paid = excluded.paid
                """, "importing bills")
            self.bills = ([], [], [], [])
        }
        if !self.maintenance.customers.isEmpty {
            let m = self.maintenance
            try self.backend.run(
                """
                INSERT INTO maintenance (customer_id, request_date, technician_id, ordinal, request_month,
                                         resolution_date, resolution_month, resolution_days)
                SELECT customer_id, request_date, technician_id, ordinal, request_month,
                       NULLIF(resolution_date, ''), NULLIF(resolution_month, \(null)), NULLIF(resolution_days, 'NaN'::float8)
                FROM unnest(\(m.customers), \(m.requests), \(m.technicians), \(m.ordinals), \(m.requestMonths),
                            \(m.resolutions), \(m.resolutionMonths), \(m.resolutionDays))
                     AS u(customer_id, request_date, technician_id, ordinal, request_month, resolution_date, resolution_month, resolution_days)
                ON CONFLICT (customer_id, request_date, technician_id, ordinal) DO UPDATE SET
                    request_month = excluded.request_month, resolution_date = excluded.resolution_date,
                    resolution_month = excluded.resolution_month, resolution_days = excluded.resolution_days
                """, "importing maintenance requests")
            self.maintenance = ([], [], [], [], [], [], [], [])
        }
        if !self.feedback.customers.isEmpty {
            let f = self.feedback
            try self.backend.run(
                """
                INSERT INTO feedback (customer_id, feedback_date, ordinal, month, score)
                SELECT * FROM unnest(\(f.customers), \(f.dates), \(f.ordinals), \(f.months), \(f.scores))
                ON CONFLICT (customer_id, feedback_date, ordinal) DO UPDATE SET month = excluded.month, score = excluded.score
                """, "importing feedback")
            self.feedback = ([], [], [], [], [])
        }
        if !self.installations.customers.isEmpty {
            let i = self.installations
            try self.backend.run(
                """
                INSERT INTO installation (customer_id, request_date, ordinal, installed_date, installed_month, days, technician_id)
                SELECT customer_id, request_date, ordinal, installed_date, installed_month, days, NULLIF(technician_id, \(null))
                FROM unnest(\(i.customers), \(i.requests), \(i.ordinals), \(i.installed), \(i.months), \(i.days), \(i.technicians))
                     AS u(customer_id, request_date, ordinal, installed_date, installed_month, days, technician_id)
                ON CONFLICT (customer_id, request_date, ordinal) DO UPDATE SET installed_date = excluded.installed_date,
                    installed_month = excluded.installed_month, days = excluded.days, technician_id = excluded.technician_id
                """, "importing installations")
            self.installations = ([], [], [], [], [], [], [])
        }
        if !self.complaints.ids.isEmpty {
            let c = self.complaints
            try self.backend.run(
                """
                INSERT INTO complaint (id, customer_id, complaint_date, month, category, resolved_date, resolved_month)
                SELECT id, customer_id, complaint_date, month, category, NULLIF(resolved_date, ''), NULLIF(resolved_month, \(null))
                FROM unnest(\(c.ids), \(c.customers), \(c.dates), \(c.months), \(c.categories), \(c.resolved), \(c.resolvedMonths))
                     AS u(id, customer_id, complaint_date, month, category, resolved_date, resolved_month)
                ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id, complaint_date = excluded.complaint_date,
                    month = excluded.month, category = excluded.category, resolved_date = excluded.resolved_date,
                    resolved_month = excluded.resolved_month
                """, "importing complaints")
            self.complaints = ([], [], [], [], [], [], [])
        }
        self.buffered = 0
    }

    func rebuildRollups(_ kinds: [String]) throws {
        try self.flush()
        for kind in kinds {
            try self.backend.run("DELETE FROM company_rollup WHERE kind = \(kind)", "clearing the \(kind) rollup")
            try self.backend.run(
                PostgresQuery(unsafeSQL: "INSERT INTO company_rollup (kind, month, region, item, count, total) " + CompanyRollups.queries[kind]!),
                "rebuilding the \(kind) rollup")
        }
    }
}
