import Foundation

/// A KPI period: an inclusive range of calendar months (SPEC.md section 5).
package struct KPIPeriod: Sendable, Equatable, CustomStringConvertible {
    package var from: Month
    package var to: Month

    /// Longest period accepted, in months.
    package static let maximumMonths = 1200

    package init(from: Month, to: Month) throws(KPIError) {
        guard from <= to else { throw KPIError.invalidPeriod("from \(from) is after to \(to)") }
        guard to.adding(months: -Self.maximumMonths) < from else {
            throw KPIError.invalidPeriod("\(from)..\(to) is longer than \(Self.maximumMonths) months")
        }
        self.from = from
        self.to = to
    }

    /// The 12 months ending with `month`.
    package static func twelveMonths(endingAt month: Month) -> KPIPeriod {
        // Twelve months are always a valid period.
        try! KPIPeriod(from: month.adding(months: -11), to: month)
    }

    /// Parses optional `YYYY-MM` bounds: missing ones default to the 12 months ending with the current one.
    package static func parse(from: String?, to: String?, nowMs: Int64, timeZone: TimeZone) throws(KPIError) -> KPIPeriod {
        func month(_ text: String, _ name: String) throws(KPIError) -> Month {
            guard let month = Month(text) else { throw KPIError.invalidPeriod("\(name): expected YYYY-MM, got \"\(text)\"") }
            return month
        }
        let current = MeterRules(timeZone: timeZone).currentMonth(nowMs: nowMs)
        switch (from, to) {
        case (nil, nil): return self.twelveMonths(endingAt: current)
        case (let from?, nil):
            let start = try month(from, "from")
            return try KPIPeriod(from: start, to: max(start, current))
        case (nil, let to?): return self.twelveMonths(endingAt: try month(to, "to"))
        case (let from?, let to?): return try KPIPeriod(from: try month(from, "from"), to: try month(to, "to"))
        }
    }

    package var months: [Month] { self.from.through(self.to) }

    package var description: String { "\(self.from)..\(self.to)" }
}

package enum KPIError: Error, CustomStringConvertible, Equatable {
    case invalidPeriod(String)

    package var description: String {
        switch self {
        case .invalidPeriod(let detail): "invalid period: \(detail)"
        }
    }
}

/// What the KPI figures depend on besides the data: the rules, and how long a list may get.
package struct KPISettings: Sendable {
    package var rules: MeterRules
    /// Most entries in `faulty_meters` (worst first); `meters.faulty` counts them all.
    package var faultyListLimit: Int
    /// How each meter's expected interval is taken for interval completeness (``ReadSuccess``).
    package var readIntervals = ReadSuccess.IntervalSettings()
    /// Most entries in `lowest_completeness_meters`.
    package var completenessListLimit = 10

    package var timeZone: TimeZone { self.rules.timeZone }

    package init(
        timeZone: TimeZone = TimeZone(identifier: "UTC")!, inactiveAfterSeconds: Int = 900, faultyFaults: Int = 3,
        faultyPoorMonths: Int = 2, faultyListLimit: Int = 100
    ) {
        self.rules = MeterRules(
            timeZone: timeZone, inactiveAfterSeconds: inactiveAfterSeconds, faultyFaults: faultyFaults,
            faultyPoorMonths: faultyPoorMonths)
        self.faultyListLimit = faultyListLimit
    }

    package init(_ configuration: DaemonConfiguration) {
        self.rules = MeterRules(configuration)
        self.faultyListLimit = 100
        self.readIntervals = ReadSuccess.IntervalSettings(
            configuredMs: configuration.metering.configuredIntervalMs, fallbackMs: configuration.metering.expectedIntervalMs)
    }
}

/// One faulty meter over a period.
package struct FaultyMeter: Sendable, Equatable {
    package var meter: String
    package var customerID: Int64?
    package var poorMonths: Int
    package var faults: Int
}

/// Computes the KPI document of SPEC.md section 5 for a period and an optional region.
///
/// Meter-month figures come from the in-memory ``MonthlyStore``, read success facts from the in-memory
/// ``ReadDayStore`` (both kept current by ``KPIRollups``);
/// company events, latency and liveness from the ``MeterStore``; states from ``MeterRules``.
package final class KPIEngine: Sendable {
    package let rollups: KPIRollups
    package let settings: KPISettings
    package let store: any MeterStore

    /// - Parameter rollups: the writer's commit listener, when a writer runs; else a fresh one.
    package init(store: any MeterStore, rollups: KPIRollups = KPIRollups(), settings: KPISettings) {
        self.store = store
        self.rollups = rollups
        self.settings = settings
    }

    package var rules: MeterRules { self.settings.rules }

    /// The 12 months ending with the current one in the configured zone.
    package func defaultPeriod(nowMs: Int64 = WallClock.nowMs()) -> KPIPeriod {
        self.rules.defaultPeriod(nowMs: nowMs)
    }

    /// The KPI document as JSON text, for the status socket, HTTP and snapshots.
    package func json(period: KPIPeriod, region: String?, nowMs: Int64 = WallClock.nowMs()) async throws -> String {
        try AnswerEncoder.json(try await self.document(period: period, region: region, nowMs: nowMs))
    }

    /// Runs `body` over the in-memory meter-month store, loading it first if needed (the dashboard's
    /// per-customer figures read it too).
    func withStore<T>(_ body: (MonthlyStore) throws -> T) async throws -> T {
        for _ in 0..<5 {
            if let result = try self.rollups.withStore(body) { return result }
            try await self.rollups.load(from: self.store)
        }
        throw KPIError.invalidPeriod("the KPI data kept changing while loading; try again")
    }

    /// Runs `body` over the in-memory read success facts, loading them first if needed.
    func withReadStore<T>(_ body: (ReadDayStore) throws -> T) async throws -> T {
        for _ in 0..<5 {
            if let result = try self.rollups.withReadStore(body) { return result }
            try await self.rollups.load(from: self.store)
        }
        throw KPIError.invalidPeriod("the KPI data kept changing while loading; try again")
    }

    /// Meters of the region (all when `nil`) that are active and inactive right now, and faulty over `period`.
    package func meterCounts(period: KPIPeriod, region: String?) async throws -> (active: Int, inactive: Int, faulty: Int) {
        let (total, faulty) = try await self.withStore { store -> (Int, Int) in
            let regionIndex = region.map { store.regionIndex(of: $0) ?? -1 }
            let total = regionIndex.map { wanted in store.meterRegion.reduce(0) { $0 + ($1 == wanted ? 1 : 0) } } ?? store.meterCount
            return (total, self.faulty(store, period: period, regionIndex: regionIndex).count)
        }
        let inactive = try await self.store.inactiveMeterCount(region: region)
        return (max(0, total - inactive), inactive, faulty)
    }

    /// Whether one meter is faulty over `period` (``MeterRules/isFaulty(faults:poorMonths:)``).
    package func isFaulty(meter name: String, period: KPIPeriod) async throws -> Bool {
        let months = try await self.store.meterMonths(named: name).filter { $0.month >= period.from && $0.month <= period.to }
        return self.rules.isFaulty(faults: Int(months.reduce(0) { $0 + $1.faults }), poorMonths: months.filter { $0.status == .poor }.count)
    }

    /// Faulty meters over `period` per the thresholds, worst first.
    package func faultyMeters(period: KPIPeriod, region: String? = nil) async throws -> [FaultyMeter] {
        try await self.withStore { store in
            self.faulty(store, period: period, regionIndex: region.map { store.regionIndex(of: $0) ?? -1 })
        }
    }

    private func faulty(_ store: MonthlyStore, period: KPIPeriod, regionIndex: Int?) -> [FaultyMeter] {
        let count = store.meterCount
        var poor = [Int32](repeating: 0, count: count)
        var faults = [Int32](repeating: 0, count: count)
        for month in period.months {
            guard let column = store.column(month) else { continue }
            for index in 0..<count {
                if let regionIndex, Int(store.meterRegion[index]) != regionIndex { continue }
                faults[index] += column.faults[index]
                if column.status(index) == 2 { poor[index] += 1 }
            }
        }
        var result: [FaultyMeter] = []
        for index in 0..<count where self.rules.isFaulty(faults: Int(faults[index]), poorMonths: Int(poor[index])) {
            let customer = store.meterCustomer[index]
            result.append(
                FaultyMeter(
                    meter: store.meterNames[index], customerID: customer >= 0 ? store.customerIDs[Int(customer)] : nil,
                    poorMonths: Int(poor[index]), faults: Int(faults[index])))
        }
        result.sort { lhs, rhs in
            if lhs.poorMonths != rhs.poorMonths { return lhs.poorMonths > rhs.poorMonths }
            if lhs.faults != rhs.faults { return lhs.faults > rhs.faults }
            return lhs.meter < rhs.meter
        }
        return result
    }

    // MARK: Read success

    /// The read success rate and interval completeness of the days `first...last` (``ReadSuccess``),
    /// of one region or all.
    package func readSuccess(
        from first: Day, through last: Day, region: String?, nowMs: Int64 = WallClock.nowMs()
    ) async throws
        -> ReadSuccess
    {
        try await self.readSuccess(from: first, through: last, region: region, nowMs: nowMs, completeness: true)
    }

    /// - Parameter completeness: whether to judge interval completeness too; the rates alone come
    ///   from per-day counts whatever the period.
    private func readSuccess(
        from first: Day, through last: Day, region: String?, nowMs: Int64, completeness: Bool
    ) async throws
        -> ReadSuccess
    {
        let calendar = MonthCalendar(timeZone: self.settings.timeZone)
        // `nil` for completeness of months older than the ones held in memory: judged from the store below.
        let held = try await self.withReadStore { store in
            store.figures(
                first: first, last: last, region: region, calendar: calendar, nowMs: nowMs, intervals: self.settings.readIntervals,
                completeness: completeness, listLimit: self.settings.completenessListLimit)
        }
        if let held { return held }
        // The period's own months, loaded for this question: meters × months, not every meter-day.
        let store = try await self.store.loadReadDayStore(months: first.month...last.month)
        return store.figures(
            first: first, last: last, region: region, calendar: calendar, nowMs: nowMs, intervals: self.settings.readIntervals,
            completeness: completeness, listLimit: self.settings.completenessListLimit) ?? ReadSuccess()
    }

    /// Each region's read success on one day (today's so far): its installed and reporting meters
    /// and their ratio, by region name; empty for a day that is not judged (before meterd's first
    /// reading, or in the future). The figure alert rules compare with a threshold.
    package func readSuccessByRegion(on day: Day, nowMs: Int64 = WallClock.nowMs()) async throws -> [ReadSuccess.RegionDay] {
        try await self.readSuccess(from: day, through: day, region: nil, nowMs: nowMs, completeness: false).byRegion.compactMap { region in
            region.days.first.map { ReadSuccess.RegionDay(region: region.region, installed: $0.installed, reporting: $0.reporting) }
        }
    }

    /// The whole KPI document: one flat object with every key of SPEC.md section 5.
    package func document(period: KPIPeriod, region: String?, nowMs: Int64 = WallClock.nowMs()) async throws -> KPIDocument {
        let monthly = try await self.withStore { store in self.monthlyFigures(store, period: period, region: region) }
        let events = try await self.eventFigures(period: period, region: region)
        let inactive = try await self.store.inactiveMeterCount(region: region)
        let flags = try await self.store.validationFlagCounts(from: period.from, to: period.to, region: region)
        let calendar = MonthCalendar(timeZone: self.settings.timeZone)
        let reads = try await self.readSuccess(
            from: Day.first(of: period.from), through: calendar.lastDay(of: period.to), region: region, nowMs: nowMs)
        // Percent of the customer-months with a status that is good (0), fair (1) or poor (2); a
        // month with only energy spread from a gap has none.
        let withStatus = monthly.health.reduce(0, +)
        func share(_ status: Int) -> Double? { withStatus > 0 ? 100 * Double(monthly.health[status]) / Double(withStatus) : nil }

        return KPIDocument(
            period: .init(from: period.from.description, to: period.to.description),
            region: region,
            generatedAt: RFC3339.format(millisecondsSinceEpoch: nowMs),
            currentMonth: { () -> String? in
                let current = self.rules.currentMonth(nowMs: nowMs)
                return current >= period.from && current <= period.to ? current.description : nil
            }(),
            // Overview
            totalCustomers: monthly.totalCustomers,
            totalConsumptionKwh: monthly.totalKwh,
            totalRevenue: monthly.totalRevenue,
            averageConsumptionKwh: monthly.records > 0 ? monthly.totalKwh / Double(monthly.records) : nil,
            meters: .init(active: max(0, monthly.meters - inactive), inactive: inactive, faulty: monthly.faulty.count),
            // Consumption
            consumptionByRegion: monthly.byRegion.map { .init(region: $0.region, kwh: $0.kwh) },
            topConsumers: monthly.top.map { .init(customerID: $0.customerID, region: $0.region, kwh: $0.kwh) },
            monthlyConsumption: monthly.byMonth.map { .init(month: $0.month.description, kwh: $0.kwh, estimated: $0.estimated) },
            // Meters
            meterHealth: .init(good: share(0), fair: share(1), poor: share(2)),
            faultyMeters: monthly.faulty.prefix(self.settings.faultyListLimit).map { meter in
                .init(meter: meter.meter, customerID: meter.customerID, poorMonths: meter.poorMonths, faults: meter.faults)
            },
            readingLatencyMs: events.latency,
            validationFlags: KPIDocument.ValidationFlags(counts: flags),
            readSuccessRate: reads.rate,
            readSuccessDaily: reads.daily.map { .init(date: $0.day.description, rate: $0.rate) },
            readSuccessByRegion: reads.byRegion.map { .init(region: $0.region, rate: $0.rate) },
            intervalCompleteness: reads.completeness,
            lowestCompletenessMeters: reads.lowestCompleteness.map { meter in
                .init(
                    meter: meter.meter, customerID: meter.customerID, region: meter.region, completeness: meter.completeness,
                    readings: meter.readings, expectedReadings: meter.expectedReadings, intervalSeconds: Double(meter.intervalMs) / 1000)
            },
            // Revenue
            revenueByRegion: monthly.byRegion.map { .init(region: $0.region, revenue: $0.revenue) },
            revenueTrend: monthly.trend.map { .init(month: $0.month.description, revenue: $0.revenue) },
            paymentStatus: events.payments,
            // Customers
            satisfaction: events.satisfaction,
            newVsReturning: .init(new: monthly.newCustomers, returning: monthly.returningCustomers),
            complaints: events.complaints,
            complaintsInPeriod: events.complaintsInPeriod,
            // Operations
            installationTimeDays: events.installationDays,
            installationsInPeriod: events.installations,
            maintenance: events.maintenance,
            technicians: events.technicians)
    }

    // MARK: Meter-month figures

    struct MonthlyFigures {
        var totalCustomers = 0
        var newCustomers = 0
        var returningCustomers = 0
        var totalKwh = 0.0
        var totalRevenue = 0.0
        var records = 0
        var health = [0, 0, 0]
        var meters = 0
        var byRegion: [(region: String, kwh: Double, revenue: Double)] = []
        var byMonth: [(month: Month, kwh: Double, estimated: Bool)] = []
        var trend: [(month: Month, revenue: Double)] = []
        var top: [(customerID: Int64, region: String, kwh: Double)] = []
        var faulty: [FaultyMeter] = []
    }

    private func monthlyFigures(_ store: MonthlyStore, period: KPIPeriod, region: String?) -> MonthlyFigures {
        var figures = MonthlyFigures()
        let regionIndex: Int? = region.map { store.regionIndex(of: $0) ?? -1 }
        let meterCount = store.meterCount
        let customerCount = store.customerIDs.count
        func wanted(_ index: Int32) -> Bool { regionIndex == nil || Int(index) == regionIndex! }

        var regionKwh = [Double](repeating: 0, count: store.regions.count)
        var regionRevenue = [Double](repeating: 0, count: store.regions.count)
        var meterKwh = [Double](repeating: 0, count: meterCount)
        var consuming = [Bool](repeating: false, count: meterCount)
        var regionHasMeters = [Bool](repeating: false, count: store.regions.count)
        for index in 0..<meterCount where wanted(store.meterRegion[index]) {
            figures.meters += 1
            regionHasMeters[Int(store.meterRegion[index])] = true
        }
        // SPEC counts average consumption and health over customer-months: a customer's meters
        // pool their readings into one record per month, whose status follows the same rule as a
        // meter's (the imported row's, else what the readings said most often). A meter without
        // a customer is a record of its own.
        var customerMonth = CustomerMonthTally(customers: customerCount)
        for month in period.months {
            var monthKwh = 0.0
            var estimated = false
            if let column = store.column(month) {
                for index in 0..<meterCount {
                    let region = store.meterRegion[index]
                    guard wanted(region), column.hasRecord(index) else { continue }
                    let kwh = column.kwh[index]
                    let customer = store.meterCustomer[index]
                    if customer >= 0 {
                        customerMonth.add(customer: Int(customer), column, index)
                    } else {
                        figures.records += 1
                        let status = column.status(index)
                        if status >= 0 { figures.health[status] += 1 }
                    }
                    if column.estimated[index] > 0 { estimated = true }
                    monthKwh += kwh
                    figures.totalRevenue += column.revenue[index]
                    regionKwh[Int(region)] += kwh
                    regionRevenue[Int(region)] += column.revenue[index]
                    meterKwh[index] += kwh
                    if kwh > 0 { consuming[index] = true }
                }
            }
            customerMonth.close { _, status in
                figures.records += 1
                if status >= 0 { figures.health[status] += 1 }
            }
            figures.totalKwh += monthKwh
            figures.byMonth.append((month, monthKwh, estimated))
        }
        for month in KPIPeriod.twelveMonths(endingAt: period.to).months {
            var revenue = 0.0
            if let column = store.column(month) {
                for index in 0..<meterCount where wanted(store.meterRegion[index]) && column.hasRecord(index) {
                    revenue += column.revenue[index]
                }
            }
            figures.trend.append((month, revenue))
        }

        // Customers: counts by installation date, consumption summed over their meters.
        var customerKwh = [Double](repeating: 0, count: customerCount)
        var customerConsuming = [Bool](repeating: false, count: customerCount)
        for index in 0..<meterCount {
            let customer = store.meterCustomer[index]
            guard customer >= 0 else { continue }
            customerKwh[Int(customer)] += meterKwh[index]
            if consuming[index] { customerConsuming[Int(customer)] = true }
        }
        let from = Int32(period.from.key), to = Int32(period.to.key)
        var top: [(customerID: Int64, region: Int32, kwh: Double)] = []
        func ranksBefore(_ lhs: (customerID: Int64, region: Int32, kwh: Double), _ rhs: (customerID: Int64, region: Int32, kwh: Double)) -> Bool {
            lhs.kwh != rhs.kwh ? lhs.kwh > rhs.kwh : lhs.customerID < rhs.customerID
        }
        for customer in 0..<customerCount where wanted(store.customerRegion[customer]) {
            regionHasMeters[Int(store.customerRegion[customer])] = true
            let installed = store.customerInstalled[customer]
            if installed <= to { figures.totalCustomers += 1 }
            if installed >= from && installed <= to { figures.newCustomers += 1 }
            if installed < from && customerConsuming[customer] { figures.returningCustomers += 1 }
            let kwh = customerKwh[customer]
            guard kwh > 0 else { continue }
            let candidate = (store.customerIDs[customer], store.customerRegion[customer], kwh)
            if top.count < 10 || ranksBefore(candidate, top[top.count - 1]) {
                let position = top.firstIndex { ranksBefore(candidate, $0) } ?? top.count
                top.insert(candidate, at: position)
                if top.count > 10 { top.removeLast() }
            }
        }
        figures.top = top.map { ($0.customerID, store.regions[Int($0.region)], $0.kwh) }
        for (index, name) in store.regions.enumerated() where regionHasMeters[index] {
            figures.byRegion.append((name, regionKwh[index], regionRevenue[index]))
        }
        figures.byRegion.sort { $0.region < $1.region }
        figures.faulty = self.faulty(store, period: period, regionIndex: regionIndex)
        return figures
    }

    // MARK: Company events and latency

    struct EventFigures {
        var latency: KPIDocument.ReadingLatency
        var payments: KPIDocument.PaymentStatus
        var satisfaction: KPIDocument.Satisfaction
        var complaints: KPIDocument.Complaints
        var complaintsInPeriod: KPIDocument.Complaints
        var installationDays: Double?
        var installations: Int
        var maintenance: KPIDocument.Maintenance
        var technicians: [KPIDocument.Technician]
    }

    private func eventFigures(period: KPIPeriod, region: String?) async throws -> EventFigures {
        let from = period.from.key, to = period.to.key
        struct Sum {
            var count = 0
            var total = 0.0
        }
        // kind → item → sums over the period; and received/resolved maintenance up to the end of it.
        var inPeriod: [String: [Int: Sum]] = [:]
        var complaintsLastMonth = (received: 0, resolved: 0)
        var maintenanceUpToEnd = (received: 0, resolved: 0)
        for row in try await self.store.companyEventTotals(through: period.to, region: region) {
            let kind = row.kind
            let month = row.month
            let count = row.count
            let total = row.total
            if kind == "maintenance_received" { maintenanceUpToEnd.received += count }
            if kind == "maintenance_resolved" { maintenanceUpToEnd.resolved += count }
            if month == to && kind == "complaint_received" { complaintsLastMonth.received += count }
            if month == to && kind == "complaint_resolved" { complaintsLastMonth.resolved += count }
            guard month >= from else { continue }
            inPeriod[kind, default: [:]][row.item, default: Sum()].count += count
            inPeriod[kind, default: [:]][row.item, default: Sum()].total += total
        }
        func sum(_ kind: String) -> Sum {
            (inPeriod[kind] ?? [:]).values.reduce(into: Sum()) { result, sum in
                result.count += sum.count
                result.total += sum.total
            }
        }
        func mean(_ sum: Sum) -> Double? { sum.count > 0 ? sum.total / Double(sum.count) : nil }

        // Latency over live readings received in the period.
        var buckets: [(bucket: Int, count: Int)] = []
        var latencyCount = 0
        var latencySum = 0.0
        for row in try await self.store.latencyBuckets(from: period.from, to: period.to, region: region) {
            buckets.append((row.bucket, row.count))
            latencyCount += row.count
            latencySum += row.sumMs
        }
        func percentile(_ q: Double) -> Double? {
            guard latencyCount > 0 else { return nil }
            let rank = max(1, Int((Double(latencyCount) * q).rounded(.up)))
            var seen = 0
            for entry in buckets {
                seen += entry.count
                if seen >= rank { return LatencyBuckets.value(of: entry.bucket) }
            }
            return nil
        }
        let latency = KPIDocument.ReadingLatency(
            avg: latencyCount > 0 ? latencySum / Double(latencyCount) : nil,
            p50: percentile(0.5), p95: percentile(0.95), p99: percentile(0.99), count: latencyCount)

        let bills = inPeriod["bill"] ?? [:]
        let payments = KPIDocument.PaymentStatus(
            paid: .init(count: bills[1]?.count ?? 0, amount: bills[1]?.total ?? 0),
            unpaid: .init(count: bills[0]?.count ?? 0, amount: bills[0]?.total ?? 0))

        let feedback = inPeriod["feedback"] ?? [:]
        let feedbackSum = sum("feedback")
        let satisfaction = KPIDocument.Satisfaction(
            average: mean(feedbackSum), count: feedbackSum.count,
            distribution: .init(counts: (1...5).map { score in feedback[score]?.count ?? 0 }))

        let complaints = KPIDocument.Complaints(received: complaintsLastMonth.received, resolved: complaintsLastMonth.resolved)
        let resolved = sum("maintenance_resolved")
        let maintenance = KPIDocument.Maintenance(
            received: sum("maintenance_received").count, processed: resolved.count,
            open: max(0, maintenanceUpToEnd.received - maintenanceUpToEnd.resolved),
            averageResolutionDays: mean(resolved))

        let names = try await self.store.technicianNames()
        let installations = inPeriod["installation"] ?? [:]
        let jobs = inPeriod["maintenance_resolved"] ?? [:]
        let technicianIDs = Set(names.keys).union(installations.keys.filter { $0 != 0 }).union(jobs.keys).sorted()
        let technicians = technicianIDs.map { id in
            KPIDocument.Technician(
                technicianID: id, name: names[id],
                installations: installations[id]?.count ?? 0, maintenanceJobs: jobs[id]?.count ?? 0,
                averageResolutionDays: mean(jobs[id] ?? Sum()))
        }
        return EventFigures(
            latency: latency, payments: payments, satisfaction: satisfaction, complaints: complaints,
            complaintsInPeriod: .init(received: sum("complaint_received").count, resolved: sum("complaint_resolved").count),
            installationDays: mean(sum("installation")), installations: sum("installation").count, maintenance: maintenance, technicians: technicians)
    }
}
