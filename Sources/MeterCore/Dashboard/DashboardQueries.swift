import Foundation

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

/// The dashboard's reads beyond the KPI document: regions and their customers, one customer's
/// history, one meter's months and recent readings, and the inactive meters.
///
/// Per-customer figures over a period come from the KPI engine's in-memory meter-month store (a
/// loop over arrays, milliseconds at 100,000 meters); the rest are point lookups in the store.
package final class DashboardQueries: Sendable {
    package let store: any MeterStore
    package let kpi: KPIEngine
    package let operatorQueries: any OperatorQueries

    package init(store: any MeterStore, kpi: KPIEngine, operatorQueries: any OperatorQueries) {
        self.store = store
        self.kpi = kpi
        self.operatorQueries = operatorQueries
    }

    // MARK: Regions

    /// Every region with its customer and meter counts, by name; only `only` for a region-scoped user.
    package func regions(only: String? = nil) async throws -> JSONValue {
        let counts = try await self.kpi.withStore { store -> [(String, Int, Int)] in
            var customers = [Int](repeating: 0, count: store.regions.count)
            var meters = [Int](repeating: 0, count: store.regions.count)
            for region in store.customerRegion { customers[Int(region)] += 1 }
            for region in store.meterRegion { meters[Int(region)] += 1 }
            return store.regions.enumerated().compactMap { index, name in
                customers[index] + meters[index] > 0 ? (name, customers[index], meters[index]) : nil
            }
        }
        return .object([
            (
                "regions",
                .array(
                    counts.filter { only == nil || $0.0 == only }.sorted { $0.0 < $1.0 }.map { name, customers, meters in
                        .object([("region", .string(name)), ("customers", .int(customers)), ("meters", .int(meters))])
                    })
            )
        ])
    }

    /// The region a meter belongs to; `nil` for a meter meterd does not know.
    package func region(ofMeter name: String) async throws -> String? {
        try await self.store.meterRecord(named: name)?.region
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
            // Months and poor months are customer-months, as the KPIs count them: a customer's
            // meters pool each month into one record (CustomerMonthTally), so a customer with two
            // meters is not counted twice, and its status is the one its monthly history shows.
            var customerMonth = CustomerMonthTally(customers: rows.count)
            for month in period.months {
                guard let column = store.column(month) else { continue }
                for (meter, row) in members {
                    guard column.hasRecord(meter) else { continue }
                    rows[row].kwh += column.kwh[meter]
                    rows[row].revenue += column.revenue[meter]
                    rows[row].faults += Int(column.faults[meter])
                    customerMonth.add(customer: row, column, meter)
                }
                customerMonth.close { row, status in
                    rows[row].records += 1
                    // A month with only energy a gap spread into it has no status.
                    guard status >= 0 else { return }
                    if status == 2 { rows[row].poorMonths += 1 }
                    // Months go forward: the latest month with a status stands.
                    rows[row].lastStatus = status
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

        // Dates and meters of the rows shown.
        let details = try await self.store.customerSummaries(ids: page.map(\.customerID))
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
            (
                "customers",
                .array(
                    page.map { row in
                        let meters = details[row.customerID]?.meters ?? []
                        return .object([
                            ("customer_id", .int(row.customerID)),
                            ("installed_on", .optional(details[row.customerID]?.installedOn) { .string($0) }),
                            ("meters", .array(meters.map { .string($0.0) })),
                            ("inactive_meters", .int(meters.filter(\.1).count)),
                            ("kwh", .number(row.kwh)),
                            ("revenue", .number(row.revenue)),
                            ("records", .int(row.records)),
                            ("poor_months", .int(row.poorMonths)),
                            ("faults", .int(row.faults)),
                            ("last_status", row.lastStatus >= 0 ? .string(statusNames[row.lastStatus]) : .null),
                        ])
                    })
            ),
        ])
    }

    // MARK: One customer

    /// A customer's data: meters, monthly history (every month it has), bills, maintenance,
    /// feedback, complaints and installations; `nil` for an unknown customer.
    package func customer(_ id: Int64, nowMs: Int64 = WallClock.nowMs()) async throws -> JSONValue? {
        guard let customer = try await self.store.customerHistory(id: id) else { return nil }
        func date(_ text: String?) -> JSONValue { .optional(text) { .string($0) } }
        return .object([
            ("customer_id", .int(customer.id)),
            ("region", .string(customer.region)),
            ("installed_on", date(customer.installedOn)),
            ("generated_at", .string(RFC3339.format(millisecondsSinceEpoch: nowMs))),
            (
                "meters",
                .array(
                    customer.meters.map { meter in
                        .object([
                            ("meter", .string(meter.name)),
                            ("state", .string(meter.inactive ? "inactive" : "active")),
                            ("last_reading", .optional(meter.lastReceivedMs) { .string(RFC3339.format(millisecondsSinceEpoch: $0)) }),
                            ("last_status", .optional(meter.lastStatus) { .string($0.name) }),
                            ("readings_total", .int(meter.readingsTotal)),
                            ("faults_total", .int(meter.faultsTotal)),
                        ])
                    })
            ),
            (
                "monthly",
                .array(
                    customer.monthly.map { month in
                        .object([
                            ("month", .string(month.month.description)),
                            ("kwh", .number(month.kwh)), ("revenue", .number(month.revenue)),
                            ("readings", .int(month.readings)), ("faults", .int(month.faults)),
                            ("status", .optional(month.status) { .string($0.name) }),
                            ("estimated", .bool(month.estimated)),
                        ])
                    })
            ),
            (
                "bills",
                .array(
                    customer.bills.map { bill in
                        .object([
                            ("month", .string(bill.month.description)), ("amount", .number(bill.amount)),
                            ("status", .string(bill.paid ? "paid" : "unpaid")),
                        ])
                    })
            ),
            (
                "maintenance",
                .array(
                    customer.maintenance.map { job in
                        .object([
                            ("request_date", .string(job.requestDate)), ("resolution_date", date(job.resolutionDate)),
                            ("resolution_days", .number(job.resolutionDays)), ("technician_id", .int(job.technicianID)),
                            ("technician", date(job.technician)),
                        ])
                    })
            ),
            ("feedback", .array(customer.feedback.map { .object([("date", .string($0.date)), ("score", .int($0.score))]) })),
            (
                "complaints",
                .array(
                    customer.complaints.map { complaint in
                        .object([
                            ("complaint_id", .int(complaint.id)), ("date", .string(complaint.date)), ("category", .string(complaint.category)),
                            ("resolved_date", date(complaint.resolvedDate)),
                        ])
                    })
            ),
            (
                "installations",
                .array(
                    customer.installations.map { installation in
                        .object([
                            ("request_date", .string(installation.requestDate)), ("installed_date", .string(installation.installedDate)),
                            ("days", .number(installation.days)), ("technician_id", .optional(installation.technicianID) { .int($0) }),
                            ("technician", date(installation.technician)),
                        ])
                    })
            ),
        ])
    }

    // MARK: One meter

    /// A meter's state and counters (as `meter ID` on the status socket) and its months: kWh,
    /// readings, faults, status and latency; `nil` for an unknown meter.
    package func meter(_ name: String, nowMs: Int64 = WallClock.nowMs()) async throws -> JSONValue? {
        guard let detail = try await self.operatorQueries.meter(name, nowMs: nowMs) else { return nil }
        let months = try await self.store.meterMonths(named: name).map { month -> JSONValue in
            .object([
                ("month", .string(month.month.description)),
                ("kwh", .number(month.kwh)), ("revenue", .number(month.revenue)),
                ("readings", .int(month.readings)), ("faults", .int(month.faults)),
                ("good", .int(month.good)), ("fair", .int(month.fair)), ("poor", .int(month.poor)),
                ("status", .optional(month.status) { .string($0.name) }),
                ("latency_avg_ms", .number(month.latencyCount > 0 ? Double(month.latencySumMs) / Double(month.latencyCount) : nil)),
                ("latency_max_ms", month.latencyCount > 0 ? .int(month.latencyMaxMs) : .null),
                ("estimated", .bool(month.estimated > 0)),
                ("estimated_kwh", .number(month.estimatedKwh)),
            ])
        }
        let flags = try await self.store.validationFlags(meter: name, limit: 50).map { flag -> JSONValue in
            .object([
                ("rule", .string(flag.rule.rawValue)), ("ts", .string(RFC3339.format(millisecondsSinceEpoch: flag.timestampMs))),
                ("seq", .int(flag.seq)), ("detail", .string(flag.detail)),
            ])
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
            ("validation_flags", .array(flags)),
        ])
    }

    /// A meter's most recent readings, newest first, with their latency; `nil` for an unknown meter.
    package func readings(_ name: String, limit: Int, nowMs: Int64 = WallClock.nowMs()) async throws -> JSONValue? {
        guard let recent = try await self.store.recentReadings(meter: name, limit: limit) else { return nil }
        let latencies = recent.readings.map { $0.receivedMs - $0.timestampMs }
        return .object([
            ("meter", .string(name)),
            ("generated_at", .string(RFC3339.format(millisecondsSinceEpoch: nowMs))),
            ("count", .int(recent.readings.count)),
            ("complete", .bool(recent.complete)),
            ("scanned_rows", .int(recent.scannedRows)),
            ("scanned_since", .optional(recent.scannedSinceMs) { .string(RFC3339.format(millisecondsSinceEpoch: $0)) }),
            (
                "latency_ms",
                .object([
                    ("avg", .number(latencies.isEmpty ? nil : Double(latencies.reduce(0, +)) / Double(latencies.count))),
                    ("max", .optional(latencies.max()) { .int($0) }),
                ])
            ),
            (
                "readings",
                .array(
                    recent.readings.map { reading in
                        .object([
                            ("seq", .int(reading.seq)),
                            ("ts", .string(RFC3339.format(millisecondsSinceEpoch: reading.timestampMs))),
                            ("received", .string(RFC3339.format(millisecondsSinceEpoch: reading.receivedMs))),
                            ("latency_ms", .int(reading.receivedMs - reading.timestampMs)),
                            ("kwh", .number(reading.kwh)),
                            ("status", .string(reading.status.name)),
                            ("fault", .optional(reading.fault) { .string($0) }),
                            ("voltage", .number(reading.voltage)),
                            ("register_kwh", .number(reading.registerKwh)),
                        ])
                    })
            ),
        ])
    }

    // MARK: Inactive meters

    /// Inactive meters (flagged by the liveness monitor, then those never heard from), optionally of
    /// one region: the count and the first `limit`, longest silent first. Ties go by meter row id,
    /// the order of the partial indexes, so no sort of every inactive meter is needed.
    package func inactive(region: String?, limit: Int) async throws -> DashboardInactiveAnswer {
        let count = try await self.store.inactiveMeterCount(region: region)
        let meters = try await self.store.inactiveMeters(region: region, limit: limit)
        return DashboardInactiveAnswer(
            region: region, count: count,
            meters: meters.map { meter in
                DashboardInactiveAnswer.Meter(
                    meter: meter.meter, customerID: meter.customerID, region: meter.region,
                    silentSinceMs: meter.silentSinceMs, lastReceivedMs: meter.lastReceivedMs)
            })
    }
}
