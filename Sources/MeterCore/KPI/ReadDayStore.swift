import Foundation

/// What the read success rate and interval completeness are judged from (``ReadSuccess``), held in
/// memory as counts and sums, never as meter-days, so neither its size nor a KPI document's cost
/// grows with meters × days:
///
/// - per meter: its region, customer and the day it counts as installed from;
/// - per region and day: how many meters reported (a `meter_day` row), and per region and
///   installation day how many meters were installed then (prefix sums give the installed count
///   of any day);
/// - per meter and month, for the newest ``heldMonths`` months only: readings, and the sum and
///   count of spacings between consecutive readings (interval completeness).
///
/// A document's rate and daily series cost days × regions, its completeness meters × months.
/// Periods reaching before the held months are judged from the store (``holdsMonths(from:through:)``).
///
/// Loaded once (``MeterStore/loadReadDayStore()``), then kept current by the writer's committed
/// deltas (``KPIRollups``). Not thread-safe: ``KPIRollups`` guards it.
package final class ReadDayStore {
    /// One month's sums of every meter, by the meter's dense index (shorter when the month saw
    /// none of the meters added last: a missing entry is zero).
    struct MonthSums {
        var readings: [Int32] = []
        var spacingSumMs: [Int64] = []
        var spacingCount: [Int32] = []

        mutating func add(_ index: Int, readings: Int, spacingSumMs: Int64, spacingCount: Int) {
            if index >= self.readings.count {
                let missing = index + 1 - self.readings.count
                self.readings.append(contentsOf: repeatElement(0, count: missing))
                self.spacingSumMs.append(contentsOf: repeatElement(0, count: missing))
                self.spacingCount.append(contentsOf: repeatElement(0, count: missing))
            }
            self.readings[index] += Int32(clamping: readings)
            self.spacingSumMs[index] += spacingSumMs
            self.spacingCount[index] += Int32(clamping: spacingCount)
        }
    }

    /// The 24 months of meter sums the daemon holds: the default KPI period (12 months) and the
    /// year before it. About 16 bytes per meter per month.
    package static let defaultHeldMonths = 24

    /// How many months of meter sums are held, counted back from the month of the latest receipt
    /// (``lastReceivedMs``); `nil` holds every month (the facts of one question, ``ReadSuccess``).
    package let heldMonths: Int?

    // Meters, by dense index in id order (the writer registers meters with ever larger ids).
    private(set) var meterIDs: [Int64] = []
    private(set) var meterNames: [String] = []
    private(set) var meterCustomers: [Int64?] = []
    private(set) var meterRegions: [Int32] = []
    /// ``Day/key`` of the day each meter counts as installed from; 0 while it is not.
    private(set) var installedDays: [Int32] = []
    private var meterIndex: [Int64: Int32] = [:]

    private(set) var regions: [String] = []
    private var regionIndex: [String: Int32] = [:]
    /// Per region: meters by the day they count as installed from.
    private var installedOn: [[Int32: Int32]] = []
    /// Per day: meters that reported, per region (shorter when a region came later).
    private var reporting: [Int32: [Int32]] = [:]
    /// Per month key (`yyyymm`): the meters' sums.
    private var months: [Int32: MonthSums] = [:]
    /// Months before this key are not held (dropped or never loaded); 0 while every month is.
    private(set) var heldFromMonth: Int32 = 0

    /// The days of the last question and their bounds: documents ask for the same period again
    /// and again, and Foundation's calendar takes microseconds a day (a year's days add up).
    private var calendarDays: (from: Day, through: Day, zone: TimeZone, days: [Day], bounds: [(start: Int64, end: Int64)])?

    /// ``ReadDayFacts/firstReceivedMs`` and ``ReadDayFacts/lastReceivedMs``.
    var firstReceivedMs: Int64?
    var lastReceivedMs: Int64?
    /// The highest commit position (``AggregateDelta/position``) the loaded rows include.
    package var coveredThrough: Int64 = 0
    /// The database snapshot the store was loaded in, where commits carry transaction ids (PostgreSQL).
    package var coveredSnapshot: CommitSnapshot?

    /// - Parameter heldMonths: months of meter sums to hold (``defaultHeldMonths`` for the daemon), `nil` for all.
    package init(heldMonths: Int? = ReadDayStore.defaultHeldMonths) {
        self.heldMonths = heldMonths
        if heldMonths == nil { self.heldMonthKeys = Int32.min...Int32.max }
    }

    var meterCount: Int { self.meterIDs.count }

    // MARK: Loading (the store fills it)

    /// Adds a meter; meters come in id order, before their days.
    package func addMeter(id: Int64, name: String, customerID: Int64?, region: String, installedDay: Int?) {
        let regionIndex = self.region(region)
        self.meterIndex[id] = Int32(self.meterIDs.count)
        self.meterIDs.append(id)
        self.meterNames.append(name)
        self.meterCustomers.append(customerID)
        self.meterRegions.append(regionIndex)
        self.installedDays.append(0)
        if let installedDay { self.setInstalled(Int(self.meterIDs.count - 1), day: Int32(installedDay)) }
    }

    /// Adds one `meter_day` row (any order): a reporting meter that day, and its month's sums.
    package func addDay(meterID: Int64, day: Int, readings: Int, spacingSumMs: Int64, spacingCount: Int) {
        guard let index = self.meterIndex[meterID] else { return }
        if readings > 0 { self.addReporting(Int(index), day: Int32(day)) }
        self.addSums(Int(index), month: Int32(day / 100), readings: readings, spacingSumMs: spacingSumMs, spacingCount: spacingCount)
    }

    /// Adds `meters` reporting on `day` in `region` (a store's per-region-day count), in place of
    /// their `meter_day` rows; call after the meters.
    package func addReporting(day: Int, region: String, meters: Int) {
        guard meters > 0 else { return }
        let regionIndex = Int(self.region(region))
        self.reporting[Int32(day), default: []].increment(at: regionIndex, by: Int32(clamping: meters))
    }

    /// Adds a meter-month's sums (a store's per-meter-month totals of its `meter_day` rows), in
    /// place of those rows; call after the meters and ``setReceived(firstMs:lastMs:)``.
    package func addMonth(meterID: Int64, month: Int, readings: Int, spacingSumMs: Int64, spacingCount: Int) {
        guard let index = self.meterIndex[meterID] else { return }
        self.addSums(Int(index), month: Int32(month), readings: readings, spacingSumMs: spacingSumMs, spacingCount: spacingCount)
    }

    /// The earliest month key (`yyyymm`) whose sums are held, `nil` for every month: a store
    /// need not load older ones.
    package var firstHeldMonth: Int? {
        guard self.heldMonths != nil else { return nil }
        // Before any receipt no month is held.
        return Int(self.heldMonthKeys?.lowerBound ?? Int32.max)
    }

    /// Sets the receive times; call before the days, so the held months are known.
    package func setReceived(firstMs: Int64?, lastMs: Int64?) {
        self.firstReceivedMs = firstMs
        self.lastReceivedMs = lastMs
        self.moveWindow()
    }

    // MARK: Changes

    private func region(_ name: String) -> Int32 {
        if let known = self.regionIndex[name] { return known }
        let index = Int32(self.regions.count)
        self.regions.append(name)
        self.regionIndex[name] = index
        self.installedOn.append([:])
        return index
    }

    /// Moves a meter's installed day (it only ever gets earlier: an earlier reading, or a first one).
    private func setInstalled(_ index: Int, day: Int32) {
        let region = Int(self.meterRegions[index])
        let old = self.installedDays[index]
        if old != 0 {
            guard day < old else { return }
            let left = self.installedOn[region][old, default: 0] - 1
            self.installedOn[region][old] = left > 0 ? left : nil
        }
        self.installedDays[index] = day
        self.installedOn[region][day, default: 0] += 1
    }

    private func addReporting(_ index: Int, day: Int32) {
        let region = Int(self.meterRegions[index])
        // Mutated in place (a copy per row would allocate once per `meter_day` row loaded).
        self.reporting[day, default: []].increment(at: region)
    }

    /// The month keys held: from ``heldFromMonth``, and up to the month after the latest receipt
    /// (readings dated later are clock errors, and would each open a month of sums); `nil` before
    /// any receipt. Kept with ``lastReceivedMs`` (``moveWindow()``), not worked out per row.
    private var heldMonthKeys: ClosedRange<Int32>?

    private static let utc = MonthCalendar(timeZone: TimeZone(identifier: "UTC")!)

    private func addSums(_ index: Int, month: Int32, readings: Int, spacingSumMs: Int64, spacingCount: Int) {
        guard let held = self.heldMonthKeys, held.contains(month) else { return }
        self.months[month, default: MonthSums()].add(index, readings: readings, spacingSumMs: spacingSumMs, spacingCount: spacingCount)
    }

    /// Moves the held months with the latest receipt, dropping those that fell out of the window.
    private func moveWindow() {
        guard let heldMonths = self.heldMonths else {
            self.heldMonthKeys = Int32.min...Int32.max
            return
        }
        guard let lastMs = self.lastReceivedMs else { return }
        // By UTC: one month either side of the zone's makes no difference to a window of months.
        var utc = Self.utc
        let latest = utc.month(ofMilliseconds: lastMs)
        let lower = max(Int32(latest.adding(months: -(heldMonths - 1)).key), self.heldFromMonth)
        self.heldMonthKeys = lower...Int32(latest.adding(months: 1).key)
        guard lower > self.heldFromMonth else { return }
        self.heldFromMonth = lower
        for month in self.months.keys where month < lower { self.months[month] = nil }
    }

    /// Commit deltas merged, so they stay as small as the set of meter-months reporting (and the
    /// meter-days started) however long no query comes.
    struct Changes {
        private struct MeterMonth: Hashable {
            var meterID: Int64
            var month: Int32
        }

        private struct Sums {
            var readings = 0
            var spacingSumMs: Int64 = 0
            var spacingCount = 0
        }

        private var sums: [MeterMonth: Sums] = [:]
        private var started: [AggregateDelta.MeterDayKey] = []
        private var meters: [Int64: AggregateDelta.MeterReads] = [:]
        private var firstReceivedMs: Int64?
        private var lastReceivedMs: Int64?

        var isEmpty: Bool {
            self.sums.isEmpty && self.started.isEmpty && self.meters.isEmpty && self.firstReceivedMs == nil && self.lastReceivedMs == nil
        }

        /// Adds a delta: its days only with `days` (a store loaded after it holds them already);
        /// the rest (earliest days, receive times, names) is the same however often it is applied.
        mutating func add(_ delta: AggregateDelta, days: Bool = true) {
            if days {
                for day in delta.days {
                    let key = MeterMonth(meterID: day.meterID, month: Int32(day.day.key / 100))
                    var sums = self.sums[key] ?? Sums()
                    sums.readings += day.readings
                    sums.spacingSumMs += day.spacingSumMs
                    sums.spacingCount += day.spacingCount
                    self.sums[key] = sums
                }
                self.started.append(contentsOf: delta.startedDays)
            }
            for meter in delta.meterReads {
                if var earlier = self.meters[meter.meterID] {
                    earlier.firstDay = min(earlier.firstDay, meter.firstDay)
                    self.meters[meter.meterID] = earlier
                } else {
                    self.meters[meter.meterID] = meter
                }
            }
            if let first = delta.firstReceivedMs { self.firstReceivedMs = min(self.firstReceivedMs ?? first, first) }
            if let last = delta.lastReceivedMs { self.lastReceivedMs = max(self.lastReceivedMs ?? last, last) }
        }

        /// Applies the changes to `store`: receive times first (they move the held months), then
        /// meters (a meter's days need it), then days.
        func apply(to store: ReadDayStore) {
            if let first = self.firstReceivedMs { store.firstReceivedMs = min(store.firstReceivedMs ?? first, first) }
            if let last = self.lastReceivedMs {
                store.lastReceivedMs = max(store.lastReceivedMs ?? last, last)
                store.moveWindow()
            }
            for meter in self.meters.values.sorted(by: { $0.meterID < $1.meterID }) { store.meterRead(meter) }
            for day in self.started {
                guard let index = store.meterIndex[day.meterID] else { continue }
                store.addReporting(Int(index), day: Int32(day.day.key))
            }
            for (key, sums) in self.sums {
                guard let index = store.meterIndex[key.meterID] else { continue }
                store.addSums(
                    Int(index), month: key.month, readings: sums.readings, spacingSumMs: sums.spacingSumMs, spacingCount: sums.spacingCount)
            }
        }
    }

    /// A meter's readings stored: it is installed by its earliest day at the latest. A meter not
    /// known was registered by the writer: unassigned, without a customer.
    private func meterRead(_ meter: AggregateDelta.MeterReads) {
        if let index = self.meterIndex[meter.meterID] {
            self.setInstalled(Int(index), day: Int32(meter.firstDay))
        } else {
            // Registered meters have ever larger ids, and come sorted: the list stays in id order.
            self.addMeter(id: meter.meterID, name: meter.name, customerID: nil, region: Region.unassigned, installedDay: meter.firstDay)
        }
    }

    // MARK: Queries

    /// The days `from...through` of the zone and their bounds, from the cache when asked before.
    private func days(from: Day, through: Day, calendar: MonthCalendar) -> (days: [Day], bounds: [(start: Int64, end: Int64)]) {
        if let cached = self.calendarDays, cached.from == from, cached.through == through, cached.zone == calendar.timeZone {
            return (cached.days, cached.bounds)
        }
        let days = calendar.days(from: from, through: through)
        let bounds = days.map { calendar.bounds(of: $0) }
        self.calendarDays = (from, through, calendar.timeZone, days, bounds)
        return (days, bounds)
    }

    /// The figures of the days `first...last` (``ReadSuccess``), of one region or all; `nil` when
    /// completeness would judge a month whose sums are no longer held (ask the store then).
    ///
    /// - Parameters:
    ///   - calendar: the configured zone's calendar (days and their lengths).
    ///   - nowMs: the moment whose day is today; later days are not judged.
    ///   - completeness: whether to judge interval completeness too (meters × months); the rates
    ///     alone cost days × regions.
    ///   - listLimit: most entries of ``ReadSuccess/lowestCompleteness``.
    func figures(
        first: Day, last: Day, region: String?, calendar: MonthCalendar, nowMs: Int64, intervals: ReadSuccess.IntervalSettings,
        completeness: Bool = true, listLimit: Int = 10
    ) -> ReadSuccess? {
        var result = ReadSuccess()
        guard let startMs = self.firstReceivedMs else { return result }
        let endMs = max(startMs, self.lastReceivedMs ?? startMs)
        let from = max(first, calendar.day(ofMilliseconds: startMs))
        let through = min(last, calendar.day(ofMilliseconds: nowMs))
        let (days, bounds) = self.days(from: from, through: through, calendar: calendar)
        guard !days.isEmpty else { return result }
        // Judged days fall in months before the held ones: only the store knows those sums.
        if completeness, Int32(days[0].key / 100) < self.heldFromMonth { return nil }
        let wantedRegion: Int32? = region.map { self.regionIndex[$0] ?? -1 }

        // The rate: installed and reporting meters per region and day.
        var fleet = days.map { ReadSuccess.DayRate(day: $0, installed: 0, reporting: 0) }
        let lastKey = Int32(last.key)
        for (regionIndex, name) in self.regions.enumerated() {
            if let wantedRegion, wantedRegion != Int32(regionIndex) { continue }
            let installedOn = self.installedOn[regionIndex]
            // A region is listed when one of its meters is installed by the last day asked for.
            guard installedOn.keys.contains(where: { $0 <= lastKey }) else { continue }
            let firstKey = Int32(days[0].key)
            var installed = 0
            var later: [(day: Int32, meters: Int32)] = []
            for (day, meters) in installedOn {
                if day < firstKey { installed += Int(meters) } else { later.append((day, meters)) }
            }
            later.sort { $0.day < $1.day }
            var next = 0
            var regionDays: [ReadSuccess.DayRate] = []
            regionDays.reserveCapacity(days.count)
            for (index, day) in days.enumerated() {
                let key = Int32(day.key)
                while next < later.count, later[next].day <= key {
                    installed += Int(later[next].meters)
                    next += 1
                }
                let counts = self.reporting[key]
                let reporting = counts.map { regionIndex < $0.count ? Int($0[regionIndex]) : 0 } ?? 0
                regionDays.append(ReadSuccess.DayRate(day: day, installed: installed, reporting: reporting))
                fleet[index].installed += installed
                fleet[index].reporting += reporting
            }
            result.byRegion.append(ReadSuccess.RegionRate(region: name, rate: ReadSuccess.mean(regionDays.compactMap(\.rate)), days: regionDays))
        }
        result.byRegion.sort { $0.region < $1.region }
        result.daily = fleet
        result.rate = ReadSuccess.mean(fleet.compactMap(\.rate))
        guard completeness else { return result }

        // Completeness: how much of each day is judged (all but the first and the latest), summed
        // per month of the judged days.
        var judgedBefore: [Int64] = [0]
        judgedBefore.reserveCapacity(days.count + 1)
        // Each month's first day index; the month ends where the next begins.
        var monthStarts: [Int] = []
        var monthKeys: [Int32] = []
        for (index, day) in days.enumerated() {
            let span = bounds[index]
            judgedBefore.append(judgedBefore[index] + max(0, min(span.end, endMs) - max(span.start, startMs)))
            let month = Int32(day.key / 100)
            if monthKeys.last != month {
                monthKeys.append(month)
                monthStarts.append(index)
            }
        }
        monthStarts.append(days.count)
        let sums = monthKeys.map { self.months[$0] }
        let dayKeys = days.map { Int32($0.key) }

        var creditTotal = 0.0
        var judgedTotal: Int64 = 0
        var lowest: [ReadSuccess.MeterCompleteness] = []
        var means: [Double] = []
        for index in 0..<self.meterCount {
            if let wantedRegion, self.meterRegions[index] != wantedRegion { continue }
            let installed = self.installedDays[index]
            guard installed != 0, installed <= lastKey else { continue }
            // The first judged day the meter is installed on (a binary search: the days are sorted).
            var low = 0
            var high = dayKeys.count
            while low < high {
                let middle = (low + high) / 2
                if dayKeys[middle] < installed { low = middle + 1 } else { high = middle }
            }
            let judged = judgedBefore[days.count] - judgedBefore[low]
            guard judged > 0 else { continue }
            let intervalMs: Int64
            if let configured = intervals.configuredMs {
                intervalMs = configured
            } else {
                means.removeAll(keepingCapacity: true)
                for case let month? in sums where index < month.spacingCount.count && month.spacingCount[index] > 0 {
                    means.append(Double(month.spacingSumMs[index]) / Double(month.spacingCount[index]))
                }
                intervalMs = ReadSuccess.median(&means).map { max(1, Int64($0.rounded())) } ?? intervals.fallbackMs
            }
            var credit = 0.0
            var readings = 0
            for (position, month) in sums.enumerated() {
                let start = max(monthStarts[position], low)
                let end = monthStarts[position + 1]
                guard start < end, let month, index < month.readings.count else { continue }
                let monthJudged = judgedBefore[end] - judgedBefore[start]
                guard monthJudged > 0 else { continue }
                let received = Int(month.readings[index])
                credit += min(Double(received) * Double(intervalMs), Double(monthJudged))
                readings += received
            }
            creditTotal += credit
            judgedTotal += judged
            let entry = ReadSuccess.MeterCompleteness(
                meter: self.meterNames[index], customerID: self.meterCustomers[index], region: self.regions[Int(self.meterRegions[index])],
                completeness: credit / Double(judged), readings: readings, expectedReadings: Double(judged) / Double(intervalMs),
                intervalMs: intervalMs)
            // The lowest few, kept sorted as they come: a full sort of every meter would dominate.
            if listLimit > 0, lowest.count < listLimit || ReadSuccess.ranksLower(entry, lowest[lowest.count - 1]) {
                let position = lowest.firstIndex { ReadSuccess.ranksLower(entry, $0) } ?? lowest.count
                lowest.insert(entry, at: position)
                if lowest.count > listLimit { lowest.removeLast() }
            }
        }
        result.completeness = judgedTotal > 0 ? creditTotal / Double(judgedTotal) : nil
        result.lowestCompleteness = lowest
        return result
    }
}

extension Array where Element == Int32 {
    /// Adds one at `index`, growing the array with zeros to reach it.
    fileprivate mutating func increment(at index: Int, by amount: Int32 = 1) {
        if index >= self.count { self.append(contentsOf: repeatElement(0, count: index + 1 - self.count)) }
        self[index] += amount
    }
}
