import Foundation

/// The read success rate and interval completeness (SPEC.md section 11), from what the store knows
/// of the days asked for (``ReadDayFacts``).
///
/// - **Judged days**: calendar days of the configured zone, from the day meterd received its first
///   reading (it was not receiving before) to today (as it stands so far), within the days asked
///   for. A reading counts on the day of its `ts`, like a month's.
/// - **Installed**: a meter is installed on a day when its customer's installation date or the
///   day of its first reading, whichever is earlier, is on or before it. meterd's data has no
///   removals: an installed meter stays installed.
/// - **Read success rate** of a day: the share of installed meters with at least one reading
///   whose `ts` falls on that day; of a period, the mean over its judged days (days without an
///   installed meter have no rate and are left out); per region the same over the region's meters.
/// - **Interval completeness** of a meter on a day: received readings ÷ expected readings, at most
///   1, where expected = the judged part of the day ÷ the meter's interval. The judged part is the
///   whole day, but for the first (from meterd's first reading) and today (up to the latest reading
///   meterd received, so the figure holds still while nothing arrives; a day with no judged part is
///   left out of completeness, not of the rate). The interval is the configured
///   `expected_interval` when the operator set one, else the median over the days of the meter's
///   mean spacing between readings, else the default `expected_interval`. Of a meter over a period:
///   the mean over its judged installed days; overall: the mean over all such meter-days.
package struct ReadSuccess: Sendable, Equatable {
    /// How a meter's expected interval is taken.
    package struct IntervalSettings: Sendable, Equatable {
        /// The interval the operator configured for every meter, `nil` to observe each meter's.
        package var configuredMs: Int64?
        /// For a meter whose interval cannot be observed (no two readings in a row).
        package var fallbackMs: Int64

        package init(configuredMs: Int64? = nil, fallbackMs: Int64 = 900_000) {
            self.configuredMs = configuredMs
            self.fallbackMs = fallbackMs
        }
    }

    /// One judged day.
    package struct DayRate: Sendable, Equatable {
        package var day: Day
        package var installed: Int
        package var reporting: Int
        /// `reporting ÷ installed`; `nil` without an installed meter.
        package var rate: Double? { self.installed > 0 ? Double(self.reporting) / Double(self.installed) : nil }
    }

    /// One region on one day.
    package struct RegionDay: Sendable, Equatable {
        package var region: String
        package var installed: Int
        package var reporting: Int
        /// `reporting ÷ installed`; `nil` without an installed meter.
        package var rate: Double? { self.installed > 0 ? Double(self.reporting) / Double(self.installed) : nil }

        package init(region: String, installed: Int, reporting: Int) {
            self.region = region
            self.installed = installed
            self.reporting = reporting
        }
    }

    /// One region over the judged days.
    package struct RegionRate: Sendable, Equatable {
        package var region: String
        /// The mean of the region's daily rates.
        package var rate: Double?
        /// The region's installed and reporting meters on each judged day, oldest first.
        package var days: [DayRate]
    }

    /// One meter's interval completeness over the judged days.
    package struct MeterCompleteness: Sendable, Equatable {
        package var meter: String
        package var customerID: Int64?
        package var region: String
        package var completeness: Double
        package var readings: Int
        package var expectedReadings: Double
        package var intervalMs: Int64
    }

    /// The judged days, oldest first, with the fleet's (or the region's) figures.
    package var daily: [DayRate] = []
    /// The mean of the daily rates; `nil` without a judged day with installed meters.
    package var rate: Double?
    /// Per region, by name.
    package var byRegion: [RegionRate] = []
    /// The mean completeness over every installed meter's judged days; `nil` without any.
    package var completeness: Double?
    /// Meters by completeness, lowest first (ties by name), at most the limit asked for.
    package var lowestCompleteness: [MeterCompleteness] = []

    package init() {}

    /// Judges the days `first...last` (cut to those ``ReadSuccess`` judges) from `facts`.
    ///
    /// - Parameters:
    ///   - calendar: the configured zone's calendar (days and their lengths).
    ///   - nowMs: the moment whose day is today; later days are not judged.
    ///   - listLimit: most entries of ``lowestCompleteness``.
    package init(
        facts: ReadDayFacts, first: Day, last: Day, calendar: MonthCalendar, nowMs: Int64, intervals: IntervalSettings,
        listLimit: Int = 10
    ) {
        guard let startMs = facts.firstReceivedMs else { return }
        let endMs = max(startMs, facts.lastReceivedMs ?? startMs)
        let from = max(first, calendar.day(ofMilliseconds: startMs))
        let through = min(last, calendar.day(ofMilliseconds: nowMs))
        let days = calendar.days(from: from, through: through)
        guard !days.isEmpty else { return }
        // How much of each day completeness judges: all of it but the first and the latest.
        let judgedMs = days.map { day in
            let bounds = calendar.bounds(of: day)
            return max(0, min(bounds.end, endMs) - max(bounds.start, startMs))
        }
        var dayIndex: [Day: Int] = [:]
        for (index, day) in days.enumerated() { dayIndex[day] = index }
        // Judged time, and days with some, from the first day up to (not including) day i.
        var judgedBefore: [Int64] = [0]
        var judgedDaysBefore = [0]
        for span in judgedMs {
            judgedBefore.append(judgedBefore.last! + span)
            judgedDaysBefore.append(judgedDaysBefore.last! + (span > 0 ? 1 : 0))
        }

        var regionNames: [String] = []
        var regionOf: [String: Int] = [:]
        var meterIndex: [Int64: Int] = [:]
        var meterRegion: [Int] = []
        // The index of the first judged day each meter is installed on.
        var firstJudged: [Int] = []
        for (index, meter) in facts.meters.enumerated() {
            meterIndex[meter.id] = index
            if regionOf[meter.region] == nil {
                regionOf[meter.region] = regionNames.count
                regionNames.append(meter.region)
            }
            meterRegion.append(regionOf[meter.region]!)
            // A binary search: the days are sorted.
            var low = 0
            var high = days.count
            while low < high {
                let middle = (low + high) / 2
                if days[middle] < meter.installedOn { low = middle + 1 } else { high = middle }
            }
            firstJudged.append(low)
        }
        // Installed meters per region and day: a count from each meter's first day on.
        var installedFrom = [[Int]](repeating: [Int](repeating: 0, count: days.count + 1), count: regionNames.count)
        for index in facts.meters.indices { installedFrom[meterRegion[index]][firstJudged[index]] += 1 }
        var reporting = [[Int]](repeating: [Int](repeating: 0, count: days.count), count: regionNames.count)
        var meterDays = [[(day: Int, readings: Int)]](repeating: [], count: facts.meters.count)
        var spacings = [[Double]](repeating: [], count: facts.meters.count)
        for entry in facts.days {
            guard let meter = meterIndex[entry.meterID] else { continue }
            if entry.spacingCount > 0 { spacings[meter].append(Double(entry.spacingSumMs) / Double(entry.spacingCount)) }
            guard let day = dayIndex[entry.day], day >= firstJudged[meter], entry.readings > 0 else { continue }
            reporting[meterRegion[meter]][day] += 1
            meterDays[meter].append((day, entry.readings))
        }

        var fleet = days.map { DayRate(day: $0, installed: 0, reporting: 0) }
        for region in regionNames.indices {
            var installed = 0
            var regionDays: [DayRate] = []
            for index in days.indices {
                installed += installedFrom[region][index]
                regionDays.append(DayRate(day: days[index], installed: installed, reporting: reporting[region][index]))
                fleet[index].installed += installed
                fleet[index].reporting += reporting[region][index]
            }
            self.byRegion.append(RegionRate(region: regionNames[region], rate: Self.mean(regionDays.compactMap(\.rate)), days: regionDays))
        }
        self.byRegion.sort { $0.region < $1.region }
        self.daily = fleet
        self.rate = Self.mean(fleet.compactMap(\.rate))

        var completenessSum = 0.0
        var meterDayCount = 0
        var meters: [MeterCompleteness] = []
        for (index, meter) in facts.meters.enumerated() where firstJudged[index] < days.count {
            let intervalMs = intervals.configuredMs ?? Self.median(spacings[index]).map { max(1, Int64($0.rounded())) } ?? intervals.fallbackMs
            var sum = 0.0
            var readings = 0
            for (day, count) in meterDays[index] where judgedMs[day] > 0 {
                sum += min(1, Double(count) * Double(intervalMs) / Double(judgedMs[day]))
                readings += count
            }
            let judgedDays = judgedDaysBefore[days.count] - judgedDaysBefore[firstJudged[index]]
            guard judgedDays > 0 else { continue }
            completenessSum += sum
            meterDayCount += judgedDays
            meters.append(
                MeterCompleteness(
                    meter: meter.name, customerID: meter.customerID, region: meter.region, completeness: sum / Double(judgedDays),
                    readings: readings,
                    expectedReadings: Double(judgedBefore[days.count] - judgedBefore[firstJudged[index]]) / Double(intervalMs),
                    intervalMs: intervalMs))
        }
        self.completeness = meterDayCount > 0 ? completenessSum / Double(meterDayCount) : nil
        meters.sort { $0.completeness != $1.completeness ? $0.completeness < $1.completeness : $0.meter < $1.meter }
        self.lowestCompleteness = Array(meters.prefix(listLimit))
    }

    private static func mean(_ values: [Double]) -> Double? {
        values.isEmpty ? nil : values.reduce(0, +) / Double(values.count)
    }

    private static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}
