import Foundation

/// A calendar month, `YYYY-MM`, stored as `year * 100 + month` (202611 for November 2026).
package struct Month: Hashable, Comparable, Sendable, CustomStringConvertible {
    package var key: Int

    package init(year: Int, month: Int) {
        self.key = year * 100 + month
    }

    package init(key: Int) {
        self.key = key
    }

    /// Parses `YYYY-MM`; `nil` for anything else.
    package init?(_ text: String) {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[0].count == 4, parts[1].count == 2,
            let year = Int(parts[0]), let month = Int(parts[1]), (1...12).contains(month), year >= 1
        else { return nil }
        self.init(year: year, month: month)
    }

    package var year: Int { self.key / 100 }
    package var month: Int { self.key % 100 }

    package func adding(months: Int) -> Month {
        let index = self.year * 12 + (self.month - 1) + months
        return Month(year: index / 12, month: index % 12 + 1)
    }

    /// Months from `self` to `other`, inclusive of both.
    package func through(_ other: Month) -> [Month] {
        guard self <= other else { return [] }
        var months: [Month] = []
        var month = self
        while month <= other {
            months.append(month)
            month = month.adding(months: 1)
        }
        return months
    }

    package var description: String {
        let month = self.month < 10 ? "0\(self.month)" : "\(self.month)"
        return "\(Self.yearText(self.year))-\(month)"
    }

    /// A year as `YYYY` reads it, zero-padded below 1000 (`0999`), so what is written parses back.
    static func yearText(_ year: Int) -> String {
        let digits = String(year)
        return year >= 0 && digits.count < 4 ? String(repeating: "0", count: 4 - digits.count) + digits : digits
    }

    package static func < (lhs: Month, rhs: Month) -> Bool { lhs.key < rhs.key }
}

/// Maps instants to calendar months of one IANA time zone, so a late reading lands in the month of its `ts`.
///
/// Month boundaries come from Foundation once and are cached: the hot path is a range check.
package struct MonthCalendar: Sendable {
    package let timeZone: TimeZone
    private var calendar: Calendar
    /// The Gregorian calendar of the zone, for day arithmetic.
    var gregorian: Calendar { self.calendar }
    /// The month of the last lookup and its bounds in epoch milliseconds, `[start, end)`.
    private var cached: (month: Month, start: Int64, end: Int64)?
    /// The day of the last ``day(ofMillisecondsCached:)`` and its bounds: the writer asks once per reading.
    private var cachedDay: (day: Day, start: Int64, end: Int64)?

    package init(timeZone: TimeZone) {
        self.timeZone = timeZone
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        self.calendar = calendar
    }

    /// The month holding an instant given in milliseconds since the Unix epoch.
    package mutating func month(ofMilliseconds ms: Int64) -> Month {
        if let cached = self.cached, ms >= cached.start, ms < cached.end { return cached.month }
        let date = Date(timeIntervalSince1970: Double(ms) / 1000)
        let components = self.calendar.dateComponents([.year, .month], from: date)
        let month = Month(year: components.year!, month: components.month!)
        let bounds = self.bounds(of: month)
        self.cached = (month, bounds.start, bounds.end)
        return month
    }

    /// The day holding an instant, from a cache of the last day asked for (the writer's hot path).
    package mutating func day(ofMillisecondsCached ms: Int64) -> Day {
        if let cached = self.cachedDay, ms >= cached.start, ms < cached.end { return cached.day }
        let day = self.day(ofMilliseconds: ms)
        let bounds = self.bounds(of: day)
        self.cachedDay = (day, bounds.start, bounds.end)
        return day
    }

    /// The month holding an instant, without touching the cache.
    package func month(of date: Date) -> Month {
        let components = self.calendar.dateComponents([.year, .month], from: date)
        return Month(year: components.year!, month: components.month!)
    }

    /// First and one-past-last millisecond of a month in this zone.
    package func bounds(of month: Month) -> (start: Int64, end: Int64) {
        (self.startMilliseconds(of: month), self.startMilliseconds(of: month.adding(months: 1)))
    }

    private func startMilliseconds(of month: Month) -> Int64 {
        let components = DateComponents(year: month.year, month: month.month, day: 1, hour: 0, minute: 0, second: 0)
        let date = self.calendar.date(from: components)!
        return Int64((date.timeIntervalSince1970 * 1000).rounded())
    }
}

extension TimeZone {
    /// Whether this zone puts every moment in the same month and day as the zone named
    /// `identifier`: the same zone, or two names of one fixed offset (`UTC` is `GMT` here, and
    /// `Etc/UTC` is not, yet the two never differ). Zones with transitions must be named alike.
    package func keepsTheSameCalendar(as identifier: String) -> Bool {
        if identifier == self.identifier { return true }
        guard let other = TimeZone(identifier: identifier) else { return false }
        if other.identifier == self.identifier { return true }
        let origin = Date(timeIntervalSince1970: -2_208_988_800)  // 1900-01-01, before any zone's first rule
        return self.nextDaylightSavingTimeTransition(after: origin) == nil && other.nextDaylightSavingTimeTransition(after: origin) == nil
            && self.secondsFromGMT(for: origin) == other.secondsFromGMT(for: origin)
    }
}
