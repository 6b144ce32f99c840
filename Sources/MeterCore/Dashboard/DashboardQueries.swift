import Foundation
import GRDB

/// How a region's customer list is ordered (`/api/regions/{region}?sort=`).
package enum CustomerSortKey: String, Sendable, CaseIterable {
    case customerID = "customer_id"
    case kwh
    case revenue
    case installed
    case records
    case poorMonths = "poor_months"
    case faults
}

/// One page of a region's customers.
package struct CustomerPageRequest: Sendable, Equatable {
    package var sort: CustomerSortKey = .kwh
    package var descending = true
    /// 1-based.
    package var page = 1
    package var perPage = 25

    /// Most rows one page may ask for.
    package static let maximumPerPage = 500

    package init(sort: CustomerSortKey = .kwh, descending: Bool = true, page: Int = 1, perPage: Int = 25) {
        self.sort = sort
        self.descending = descending
        self.page = page
        self.perPage = perPage
    }
}

/// How far `/api/meters/{id}/readings` may look back through the append-only `reading` table,
/// which has no per-meter index (one would dirty a page per meter per commit on the ingest path).
package struct ReadingScanLimits: Sendable {
    /// Rows read per step, newest first.
    package var chunkRows: Int64 = 65_536
    /// Most rows read for one request.
    package var maximumRows: Int64 = 1_048_576
    /// Stop starting new steps after this long.
    package var budget: Duration = .milliseconds(60)

    package init(chunkRows: Int64 = 65_536, maximumRows: Int64 = 1_048_576, budget: Duration = .milliseconds(60)) {
        self.chunkRows = chunkRows
        self.maximumRows = maximumRows
        self.budget = budget
    }
}

/// The dashboard's reads beyond the KPI document: regions and their customers, one customer's
/// history, one meter's months and recent readings, and the inactive meters.
///
/// Per-customer figures over a period come from the KPI engine's in-memory meter-month store (a
/// loop over arrays, milliseconds at 100,000 meters); the rest are point lookups by primary key or
/// index. Every value from a request reaches SQL as a bound parameter.
package final class DashboardQueries: Sendable {
    package let database: MeterDatabase
    package let kpi: KPIEngine
    package let operatorQueries: any OperatorQueries
    package let readingScan: ReadingScanLimits

    package init(database: MeterDatabase, kpi: KPIEngine, operatorQueries: any OperatorQueries,
                 readingScan: ReadingScanLimits = ReadingScanLimits()) {
        self.database = database
        self.kpi = kpi
        self.operatorQueries = operatorQueries
        self.readingScan = readingScan
    }

    // MARK: Regions

    /// Every region with its customer and meter counts, by name.
    package func regions() async throws -> JSONValue {
        let counts = try await self.kpi.withStore { store -> [(String, Int, Int)] in
            var customers = [Int](repeating: 0, count: store.regions.count)
            var meters = [Int](repeating: 0, count: store.regions.count)
            for region in store.customerRegion { customers[Int(region)] += 1 }
            for region in store.meterRegion { meters[Int(region)] += 1 }
            return store.regions.enumerated().compactMap { index, name in
                customers[index] + meters[index] > 0 ? (name, customers[index], meters[index]) : nil
            }
        }
        return .object([("regions", .array(counts.sorted { $0.0 < $1.0 }.map { name, customers, meters in
            .object([("region", .string(name)), ("customers", .int(customers)), ("meters", .int(meters))])
        }))])
    }

    private struct CustomerFigures {
        var index: Int32
        var customerID: Int64
        var installedMonth: Int32
        var kwh = 0.0
        var revenue = 0.0
        var records = 0
        var poorMonths = 0
        var faults = 0
        /// Status of the latest month with a record in the period, -1 when none.
        var lastStatus = -1
        var lastMonth = 0
    }

    /// A region's customers with their figures over `period`, sorted and paged; `nil` for a region
    /// meterd does not know.
    package func regionCustomers(_ region: String, period: KPIPeriod, request: CustomerPageRequest) async throws -> JSONValue? {
        let computed = try await self.kpi.withStore { store -> (rows: [CustomerFigures], meters: Int)? in
            guard let regionIndex = store.regionIndex(of: region).map(Int32.init) else { return nil }
            // Local copies: the loops below then read plain arrays, not class properties.
            let customerRegion = store.customerRegion, customerIDs = store.customerIDs, installed = store.customerInstalled
            let meterCustomer = store.meterCustomer, meterRegion = store.meterRegion
            var slot = [Int32](repeating: -1, count: customerIDs.count)
            var rows: [CustomerFigures] = []
            for customer in 0..<customerIDs.count where customerRegion[customer] == regionIndex {
                slot[customer] = Int32(rows.count)
                rows.append(CustomerFigures(index: Int32(customer), customerID: customerIDs[customer], installedMonth: installed[customer]))
            }
            // The region's customers' meters, once, as (meter index, row).
            var meters = 0
            var members: [(meter: Int, row: Int)] = []
            members.reserveCapacity(rows.count)
            for meter in 0..<meterCustomer.count {
                if meterRegion[meter] == regionIndex { meters += 1 }
                let customer = meterCustomer[meter]
                if customer >= 0, slot[Int(customer)] >= 0 { members.append((meter, Int(slot[Int(customer)]))) }
            }
            if rows.isEmpty && meters == 0 { return nil }
            for month in period.months {
                guard let column = store.column(month) else { continue }
                for (meter, row) in members {
                    let status = column.status(meter)
                    guard status >= 0 else { continue }
                    rows[row].kwh += column.kwh[meter]
                    rows[row].revenue += column.revenue[meter]
                    rows[row].records += 1
                    rows[row].faults += Int(column.faults[meter])
                    if status == 2 { rows[row].poorMonths += 1 }
                    // Months go forward; a customer's meters in the same month: the worse status.
                    if month.key > rows[row].lastMonth {
                        rows[row].lastMonth = month.key
                        rows[row].lastStatus = status
                    } else {
                        rows[row].lastStatus = max(rows[row].lastStatus, status)
                    }
                }
            }
            return (rows, meters)
        }
        guard let computed else { return nil }
        var rows = computed.rows
        let descending = request.descending
        func ordered<T: Comparable>(_ lhs: T, _ rhs: T, _ lhsID: Int64, _ rhsID: Int64) -> Bool {
            if lhs != rhs { return descending ? lhs > rhs : lhs < rhs }
            return lhsID < rhsID  // ties by lower id, whichever the direction
        }
        rows.sort { lhs, rhs in
            switch request.sort {
            case .customerID: return descending ? lhs.customerID > rhs.customerID : lhs.customerID < rhs.customerID
            case .kwh: return ordered(lhs.kwh, rhs.kwh, lhs.customerID, rhs.customerID)
            case .revenue: return ordered(lhs.revenue, rhs.revenue, lhs.customerID, rhs.customerID)
            case .installed: return ordered(lhs.installedMonth, rhs.installedMonth, lhs.customerID, rhs.customerID)
            case .records: return ordered(lhs.records, rhs.records, lhs.customerID, rhs.customerID)
            case .poorMonths: return ordered(lhs.poorMonths, rhs.poorMonths, lhs.customerID, rhs.customerID)
            case .faults: return ordered(lhs.faults, rhs.faults, lhs.customerID, rhs.customerID)
            }
        }
        let total = rows.count
        let pages = max(1, (total + request.perPage - 1) / request.perPage)
        let start = min(total, (request.page - 1) * request.perPage)
        let page = Array(rows[start..<min(total, start + request.perPage)])

        // Dates and meters of the rows shown, by primary key and the meter_customer index.
        let ids = page.map(\.customerID)
        let details = try await self.database.pool.read { db -> (installed: [Int64: String], meters: [Int64: [(String, Bool)]]) in
            var installed: [Int64: String] = [:]
            var meters: [Int64: [(String, Bool)]] = [:]
            guard !ids.isEmpty else { return (installed, meters) }
            let marks = Array(repeating: "?", count: ids.count).joined(separator: ",")
            let arguments = StatementArguments(ids)
            for row in try Row.fetchAll(db, sql: "SELECT id, installed_on FROM customer WHERE id IN (\(marks))", arguments: arguments) {
                installed[row["id"]] = row["installed_on"]
            }
            for row in try Row.fetchAll(db, sql: """
                SELECT customer_id, name, (inactive_since_ms IS NOT NULL OR last_received_ms IS NULL) AS inactive
                FROM meter WHERE customer_id IN (\(marks)) ORDER BY name
                """, arguments: arguments) {
                meters[row["customer_id"], default: []].append((row["name"], row["inactive"]))
            }
            return (installed, meters)
        }
        let statusNames = ["good", "fair", "poor"]
        return .object([
            ("region", .string(region)),
            ("period", .object([("from", .string(period.from.description)), ("to", .string(period.to.description))])),
            ("sort", .string(request.sort.rawValue)),
            ("order", .string(request.descending ? "desc" : "asc")),
            ("page", .int(request.page)),
            ("per_page", .int(request.perPage)),
            ("pages", .int(pages)),
            ("total", .int(total)),
            ("meters", .int(computed.meters)),
            ("customers", .array(page.map { row in
                let meters = details.meters[row.customerID] ?? []
                return .object([
                    ("customer_id", .int(row.customerID)),
                    ("installed_on", .optional(details.installed[row.customerID]) { .string($0) }),
                    ("meters", .array(meters.map { .string($0.0) })),
                    ("inactive_meters", .int(meters.filter(\.1).count)),
                    ("kwh", .number(row.kwh)),
                    ("revenue", .number(row.revenue)),
                    ("records", .int(row.records)),
                    ("poor_months", .int(row.poorMonths)),
                    ("faults", .int(row.faults)),
                    ("last_status", row.lastStatus >= 0 ? .string(statusNames[row.lastStatus]) : .null),
                ])
            })),
        ])
    }

    // MARK: One customer

    /// A customer's data: meters, monthly history (every month it has), bills, maintenance,
    /// feedback, complaints and installations; `nil` for an unknown customer.
    package func customer(_ id: Int64, nowMs: Int64 = WallClock.nowMs()) async throws -> JSONValue? {
        try await self.database.pool.read { db -> JSONValue? in
            guard let customer = try Row.fetchOne(db, sql: "SELECT id, region, installed_on FROM customer WHERE id = ?", arguments: [id]) else {
                return nil
            }
            let meters = try Row.fetchAll(db, sql: """
                SELECT name, inactive_since_ms, last_received_ms, readings_total, faults_total, last_status
                FROM meter WHERE customer_id = ? ORDER BY name
                """, arguments: [id]).map { row -> JSONValue in
                let inactive = row["inactive_since_ms"] as Int64? != nil || row["last_received_ms"] as Int64? == nil
                let lastStatus: Int64? = row["last_status"]
                return .object([
                    ("meter", .string(row["name"])),
                    ("state", .string(inactive ? "inactive" : "active")),
                    ("last_reading", .optional(row["last_received_ms"] as Int64?) { .string(RFC3339.format(millisecondsSinceEpoch: $0)) }),
                    ("last_status", .optional(lastStatus.flatMap { MeterHealth(rawValue: UInt8(truncatingIfNeeded: $0)) }) { .string($0.name) }),
                    ("readings_total", .int(row["readings_total"] as Int64)),
                    ("faults_total", .int(row["faults_total"] as Int64)),
                ])
            }
            let monthly = try Row.fetchAll(db, sql: """
                SELECT mm.month, SUM(mm.kwh) AS kwh, SUM(mm.revenue) AS revenue, SUM(mm.readings) AS readings,
                       SUM(mm.faults) AS faults, SUM(mm.good) AS good, SUM(mm.fair) AS fair, SUM(mm.poor) AS poor,
                       MAX(mm.imported_status) AS imported_status
                FROM meter_month mm JOIN meter m ON m.id = mm.meter_id
                WHERE m.customer_id = ? GROUP BY mm.month ORDER BY mm.month
                """, arguments: [id]).map { row -> JSONValue in
                let status = Self.monthStatus(imported: row["imported_status"], readings: row["readings"], good: row["good"],
                                              fair: row["fair"], poor: row["poor"])
                return .object([
                    ("month", .string(Month(key: row["month"]).description)),
                    ("kwh", .number(row["kwh"])), ("revenue", .number(row["revenue"])),
                    ("readings", .int(row["readings"] as Int64)), ("faults", .int(row["faults"] as Int64)),
                    ("status", .optional(status) { .string($0.name) }),
                ])
            }
            let bills = try Row.fetchAll(db, sql: "SELECT month, amount, paid FROM bill WHERE customer_id = ? ORDER BY month",
                                         arguments: [id]).map { row -> JSONValue in
                .object([("month", .string(Month(key: row["month"]).description)), ("amount", .number(row["amount"])),
                         ("status", .string((row["paid"] as Int64) != 0 ? "paid" : "unpaid"))])
            }
            let maintenance = try Row.fetchAll(db, sql: """
                SELECT m.request_date, m.resolution_date, m.resolution_days, m.technician_id, t.name
                FROM maintenance m LEFT JOIN technician t ON t.id = m.technician_id
                WHERE m.customer_id = ? ORDER BY m.request_date, m.ordinal
                """, arguments: [id]).map { row -> JSONValue in
                .object([("request_date", .string(row["request_date"])),
                         ("resolution_date", .optional(row["resolution_date"] as String?) { .string($0) }),
                         ("resolution_days", .number(row["resolution_days"])),
                         ("technician_id", .int(row["technician_id"] as Int64)),
                         ("technician", .optional(row["name"] as String?) { .string($0) })])
            }
            let feedback = try Row.fetchAll(db, sql: """
                SELECT feedback_date, score FROM feedback WHERE customer_id = ? ORDER BY feedback_date, ordinal
                """, arguments: [id]).map { row -> JSONValue in
                .object([("date", .string(row["feedback_date"])), ("score", .int(row["score"] as Int64))])
            }
            let complaints = try Row.fetchAll(db, sql: """
                SELECT id, complaint_date, category, resolved_date FROM complaint WHERE customer_id = ? ORDER BY complaint_date, id
                """, arguments: [id]).map { row -> JSONValue in
                .object([("complaint_id", .int(row["id"] as Int64)), ("date", .string(row["complaint_date"])),
                         ("category", .string(row["category"])),
                         ("resolved_date", .optional(row["resolved_date"] as String?) { .string($0) })])
            }
            let installations = try Row.fetchAll(db, sql: """
                SELECT i.request_date, i.installed_date, i.days, i.technician_id, t.name
                FROM installation i LEFT JOIN technician t ON t.id = i.technician_id
                WHERE i.customer_id = ? ORDER BY i.request_date, i.ordinal
                """, arguments: [id]).map { row -> JSONValue in
                .object([("request_date", .string(row["request_date"])), ("installed_date", .string(row["installed_date"])),
                         ("days", .number(row["days"])),
                         ("technician_id", .optional(row["technician_id"] as Int64?) { .int($0) }),
                         ("technician", .optional(row["name"] as String?) { .string($0) })])
            }
            return .object([
                ("customer_id", .int(customer["id"] as Int64)),
                ("region", .string(customer["region"])),
                ("installed_on", .optional(customer["installed_on"] as String?) { .string($0) }),
                ("generated_at", .string(RFC3339.format(millisecondsSinceEpoch: nowMs))),
                ("meters", .array(meters)),
                ("monthly", .array(monthly)),
                ("bills", .array(bills)),
                ("maintenance", .array(maintenance)),
                ("feedback", .array(feedback)),
                ("complaints", .array(complaints)),
                ("installations", .array(installations)),
            ])
        }
    }

    /// A month's status: the imported row's, else what the readings said most often (ties → the worse).
    static func monthStatus(imported: Int64?, readings: Int64, good: Int64, fair: Int64, poor: Int64) -> MeterHealth? {
        if let imported { return MeterHealth(rawValue: UInt8(clamping: imported)) }
        guard readings > 0 else { return nil }
        if poor >= fair && poor >= good { return .poor }
        if fair >= good { return .fair }
        return .good
    }

    // MARK: One meter

    /// A meter's state and counters (as `meter ID` on the status socket) and its months: kWh,
    /// readings, faults, status and latency; `nil` for an unknown meter.
    package func meter(_ name: String, nowMs: Int64 = WallClock.nowMs()) async throws -> JSONValue? {
        guard let detail = try await self.operatorQueries.meter(name, nowMs: nowMs) else { return nil }
        let months = try await self.database.pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT mm.month, mm.kwh, mm.revenue, mm.readings, mm.faults, mm.good, mm.fair, mm.poor,
                       mm.latency_sum_ms, mm.latency_count, mm.latency_max_ms, mm.imported_status
                FROM meter_month mm JOIN meter m ON m.id = mm.meter_id WHERE m.name = ? ORDER BY mm.month
                """, arguments: [name]).map { row -> JSONValue in
                let count: Int64 = row["latency_count"]
                let status = Self.monthStatus(imported: row["imported_status"], readings: row["readings"], good: row["good"],
                                              fair: row["fair"], poor: row["poor"])
                return .object([
                    ("month", .string(Month(key: row["month"]).description)),
                    ("kwh", .number(row["kwh"])), ("revenue", .number(row["revenue"])),
                    ("readings", .int(row["readings"] as Int64)), ("faults", .int(row["faults"] as Int64)),
                    ("good", .int(row["good"] as Int64)), ("fair", .int(row["fair"] as Int64)), ("poor", .int(row["poor"] as Int64)),
                    ("status", .optional(status) { .string($0.name) }),
                    ("latency_avg_ms", .number(count > 0 ? Double(row["latency_sum_ms"] as Int64) / Double(count) : nil)),
                    ("latency_max_ms", count > 0 ? .int(row["latency_max_ms"] as Int64) : .null),
                ])
            }
        }
        func time(_ ms: Int64?) -> JSONValue { .optional(ms) { .string(RFC3339.format(millisecondsSinceEpoch: $0)) } }
        return .object([
            ("meter", .string(detail.meter)),
            ("customer_id", .optional(detail.customerID) { .int($0) }),
            ("region", .string(detail.region)),
            ("state", .string(detail.state)),
            ("faulty", .bool(detail.faulty)),
            ("generated_at", time(nowMs)),
            ("first_seen", time(detail.firstSeenMs)),
            ("last_reading", time(detail.lastReceivedMs)),
            ("last_ts", time(detail.lastTimestampMs)),
            ("last_seq", .optional(detail.lastSeq) { .int($0) }),
            ("last_status", .optional(detail.lastStatus) { .string($0.name) }),
            ("last_fault", .optional(detail.lastFault) { .string($0) }),
            ("inactive_since", time(detail.inactiveSinceMs)),
            ("readings_total", .int(detail.readingsTotal)),
            ("faults_total", .int(detail.faultsTotal)),
            ("duplicates_total", .int(detail.duplicatesTotal)),
            ("monthly", .array(months)),
        ])
    }

    /// A meter's most recent readings, newest first, with their latency; `nil` for an unknown meter.
    ///
    /// `reading` is append-only with rowids in commit order and no per-meter index, so this walks
    /// back from the meter's last reading in rowid windows (a binary search on `received_ms` finds
    /// where that is), until it has `limit` readings, reaches the meter's first reading, or has
    /// read ``ReadingScanLimits/maximumRows`` rows; `complete` says whether it saw all of them.
    package func readings(_ name: String, limit: Int, nowMs: Int64 = WallClock.nowMs()) async throws -> JSONValue? {
        let limits = self.readingScan
        return try await self.database.pool.read { db -> JSONValue? in
            guard let meter = try Row.fetchOne(db, sql: """
                SELECT id, first_seen_ms, last_received_ms, readings_total FROM meter WHERE name = ?
                """, arguments: [name]) else { return nil }
            let meterID: Int64 = meter["id"]
            let firstSeen: Int64? = meter["first_seen_ms"]
            let lastReceived: Int64? = meter["last_received_ms"]
            var readings: [JSONValue] = []
            var scanned: Int64 = 0
            var complete = true
            var oldestScannedMs: Int64?
            if let lastReceived, (meter["readings_total"] as Int64) > 0, limit > 0 {
                // Receive times grow with rowid (one writer, commit order) up to the few milliseconds
                // between event loops; the slack covers that.
                let slackMs: Int64 = 5_000
                var high = try Self.lastRowid(db, receivedAtOrBefore: lastReceived + slackMs)
                let floorMs = (firstSeen ?? 0) - slackMs
                let started = ContinuousClock.now
                let statement = try db.makeStatement(sql: """
                    SELECT seq, ts_ms, received_ms, kwh, status, fault, voltage FROM reading
                    WHERE rowid > ? AND rowid <= ? AND meter_id = ? ORDER BY rowid DESC LIMIT ?
                    """)
                complete = false
                while high > 0 {
                    if readings.count >= limit { complete = true; break }
                    if scanned >= limits.maximumRows || ContinuousClock.now - started > limits.budget { break }
                    let low = max(0, high - limits.chunkRows)
                    let rows = try Row.fetchAll(statement, arguments: [low, high, meterID, limit - readings.count])
                    for row in rows {
                        let ts: Int64 = row["ts_ms"]
                        let received: Int64 = row["received_ms"]
                        let status: Int64 = row["status"]
                        readings.append(.object([
                            ("seq", .int(row["seq"] as Int64)),
                            ("ts", .string(RFC3339.format(millisecondsSinceEpoch: ts))),
                            ("received", .string(RFC3339.format(millisecondsSinceEpoch: received))),
                            ("latency_ms", .int(received - ts)),
                            ("kwh", .number(row["kwh"])),
                            ("status", .string(MeterHealth(rawValue: UInt8(clamping: status))?.name ?? "good")),
                            ("fault", .optional(row["fault"] as String?) { .string($0) }),
                            ("voltage", .number(row["voltage"])),
                        ]))
                    }
                    scanned += high - low
                    high = low
                    let oldest = try Int64.fetchOne(db, sql: "SELECT received_ms FROM reading WHERE rowid > ? ORDER BY rowid LIMIT 1",
                                                    arguments: [low])
                    oldestScannedMs = oldest
                    if high == 0 || (oldest ?? 0) < floorMs { complete = true; break }
                }
            }
            let latencies = readings.compactMap { value -> Int64? in
                guard case .object(let pairs) = value, case .int(let latency)? = pairs.first(where: { $0.0 == "latency_ms" })?.1 else { return nil }
                return latency
            }
            return .object([
                ("meter", .string(name)),
                ("generated_at", .string(RFC3339.format(millisecondsSinceEpoch: nowMs))),
                ("count", .int(readings.count)),
                ("complete", .bool(complete)),
                ("scanned_rows", .int(scanned)),
                ("scanned_since", .optional(complete ? nil : oldestScannedMs) { .string(RFC3339.format(millisecondsSinceEpoch: $0)) }),
                ("latency_ms", .object([
                    ("avg", .number(latencies.isEmpty ? nil : Double(latencies.reduce(0, +)) / Double(latencies.count))),
                    ("max", .optional(latencies.max()) { .int($0) }),
                ])),
                ("readings", .array(readings)),
            ])
        }
    }

    /// The largest rowid whose reading was received at or before `ms` (0 if none): a binary search
    /// over rowids, a few dozen primary-key lookups.
    static func lastRowid(_ db: Database, receivedAtOrBefore ms: Int64) throws -> Int64 {
        guard let maximum = try Int64.fetchOne(db, sql: "SELECT MAX(rowid) FROM reading") else { return 0 }
        let probe = try db.makeStatement(sql: "SELECT rowid, received_ms FROM reading WHERE rowid >= ? ORDER BY rowid LIMIT 1")
        if let last = try Row.fetchOne(probe, arguments: [maximum]), (last["received_ms"] as Int64) <= ms { return maximum }
        var low: Int64 = 0  // every row up to here was received at or before ms
        var high = maximum  // the row here (or the next one after it) was received after ms
        while high - low > 1 {
            let middle = low + (high - low) / 2
            guard let row = try Row.fetchOne(probe, arguments: [middle]) else { high = middle; continue }
            let rowid: Int64 = row["rowid"]
            if rowid < high && (row["received_ms"] as Int64) <= ms { low = rowid } else { high = middle }
        }
        return low
    }

    // MARK: Inactive meters

    /// Inactive meters (flagged by the liveness monitor, then those never heard from), optionally of
    /// one region: the count and the first `limit`, longest silent first. Ties go by meter row id,
    /// the order of the partial indexes, so no sort of every inactive meter is needed.
    package func inactive(region: String?, limit: Int) async throws -> DashboardInactiveAnswer {
        try await self.database.pool.read { db in
            let filter = region == nil ? "" : " AND region = ?"
            let regionArgument: StatementArguments = region.map { [$0] } ?? []
            let flaggedCount = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM meter WHERE inactive_since_ms IS NOT NULL" + filter,
                                                arguments: regionArgument) ?? 0
            let silentCount = try Int.fetchOne(db, sql: """
                SELECT COUNT(*) FROM meter WHERE last_received_ms IS NULL AND inactive_since_ms IS NULL
                """ + filter, arguments: regionArgument) ?? 0
            var rows = try Row.fetchAll(db, sql: """
                SELECT name, customer_id, region, inactive_since_ms, last_received_ms FROM meter
                WHERE inactive_since_ms IS NOT NULL\(filter) ORDER BY inactive_since_ms, id LIMIT ?
                """, arguments: regionArgument + [limit])
            if rows.count < limit {
                rows += try Row.fetchAll(db, sql: """
                    SELECT name, customer_id, region, NULL AS inactive_since_ms, NULL AS last_received_ms FROM meter
                    WHERE last_received_ms IS NULL AND inactive_since_ms IS NULL\(filter) ORDER BY id LIMIT ?
                    """, arguments: regionArgument + [limit - rows.count])
            }
            return DashboardInactiveAnswer(region: region, count: flaggedCount + silentCount, meters: rows.map { row in
                DashboardInactiveAnswer.Meter(meter: row["name"], customerID: row["customer_id"], region: row["region"],
                                              silentSinceMs: row["inactive_since_ms"], lastReceivedMs: row["last_received_ms"])
            })
        }
    }
}
