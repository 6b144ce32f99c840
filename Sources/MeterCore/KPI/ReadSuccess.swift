import Foundation

/// The read success rate and interval completeness (SPEC.md section 11), from what the store knows
/// of the days asked for (``ReadDayFacts``), or from the counts and sums held in memory
/// (``ReadDayStore/figures(first:last:region:calendar:nowMs:intervals:completeness:listLimit:)``,
/// which this type's facts initializer runs too, so both give the same answer).
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
/// - **Interval completeness**, judged per meter and calendar month (so it is kept as per
///   meter-month sums, not per meter-day): the month's judged time is the part of its judged days
///   from the meter's installation on (whole days, but for the first, from meterd's first reading,
///   and today, up to the latest reading meterd received, so the figure holds still while nothing
///   arrives); the readings it covers are the meter's readings dated in the month × the meter's
///   interval, at most the month's judged time. A meter's completeness is its covered time ÷ its
///   judged time over the months of the days asked for; overall, all installed meters' covered
///   time ÷ their judged time. The interval is the configured `expected_interval` when the
///   operator set one, else the median over those months of the meter's mean spacing between
///   consecutive readings in the month, else the default `expected_interval`.
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
        let store = ReadDayStore(heldMonths: nil)
        store.setReceived(firstMs: facts.firstReceivedMs, lastMs: facts.lastReceivedMs)
        for meter in facts.meters {
            store.addMeter(id: meter.id, name: meter.name, customerID: meter.customerID, region: meter.region, installedDay: meter.installedOn.key)
        }
        for day in facts.days where day.day >= first && day.day <= last {
            store.addDay(
                meterID: day.meterID, day: day.day.key, readings: day.readings, spacingSumMs: day.spacingSumMs, spacingCount: day.spacingCount)
        }
        // Every month is held (no window), so there is always an answer.
        self = store.figures(first: first, last: last, region: nil, calendar: calendar, nowMs: nowMs, intervals: intervals, listLimit: listLimit)!
    }

    static func mean(_ values: [Double]) -> Double? {
        values.isEmpty ? nil : values.reduce(0, +) / Double(values.count)
    }

    /// The median of `values` (sorted in place, so a caller's buffer is reused).
    static func median(_ values: inout [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        values.sort()
        let middle = values.count / 2
        return values.count % 2 == 1 ? values[middle] : (values[middle - 1] + values[middle]) / 2
    }

    /// The order of ``lowestCompleteness``: lowest first, ties by meter name.
    static func ranksLower(_ lhs: MeterCompleteness, _ rhs: MeterCompleteness) -> Bool {
        lhs.completeness != rhs.completeness ? lhs.completeness < rhs.completeness : lhs.meter < rhs.meter
    }
}
