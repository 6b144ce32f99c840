import Foundation

/// A calendar day, `YYYY-MM-DD`, stored as `year * 10_000 + month * 100 + day` (20261130).
///
/// Days are days of the configured time zone (``MonthCalendar``), like months: the read success
/// rate (SPEC.md section 11) is judged per day.
package struct Day: Hashable, Comparable, Sendable, CustomStringConvertible {
    package var key: Int

    package init(year: Int, month: Int, day: Int) {
        self.key = year * 10_000 + month * 100 + day
    }

    package init(key: Int) {
        self.key = key
    }

    /// Parses `YYYY-MM-DD` (a longer text, such as `YYYY-MM-DD HH:MM:SS`, by its first ten
    /// characters); `nil` for anything else.
    package init?(_ text: some StringProtocol) {
        let parts = text.prefix(10).split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].count == 4, parts[1].count == 2, parts[2].count == 2,
            let year = Int(parts[0]), let month = Int(parts[1]), let day = Int(parts[2]),
            year >= 1, (1...12).contains(month), (1...31).contains(day)
        else { return nil }
        self.init(year: year, month: month, day: day)
    }

    package var year: Int { self.key / 10_000 }
    package var monthOfYear: Int { self.key / 100 % 100 }
    package var dayOfMonth: Int { self.key % 100 }
    /// The month the day is in.
    package var month: Month { Month(key: self.key / 100) }
    /// The first day of a month.
    package static func first(of month: Month) -> Day { Day(year: month.year, month: month.month, day: 1) }

    package var description: String {
        func two(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(Month.yearText(self.year))-\(two(self.monthOfYear))-\(two(self.dayOfMonth))"
    }

    package static func < (lhs: Day, rhs: Day) -> Bool { lhs.key < rhs.key }
}

/// Calendar days of the zone: the day of an instant, a day's bounds, the days of a range.
extension MonthCalendar {
    /// The day holding an instant given in milliseconds since the Unix epoch.
    package func day(ofMilliseconds ms: Int64) -> Day {
        let components = self.gregorian.dateComponents([.year, .month, .day], from: Date(timeIntervalSince1970: Double(ms) / 1000))
        return Day(year: components.year!, month: components.month!, day: components.day!)
    }

    /// First and one-past-last millisecond of a day in this zone (23 or 25 hours on a daylight-saving change).
    package func bounds(of day: Day) -> (start: Int64, end: Int64) {
        let start = self.gregorian.date(from: DateComponents(year: day.year, month: day.monthOfYear, day: day.dayOfMonth))!
        let end = self.gregorian.date(byAdding: .day, value: 1, to: start)!
        return (Int64((start.timeIntervalSince1970 * 1000).rounded()), Int64((end.timeIntervalSince1970 * 1000).rounded()))
    }

    /// The day after `day`.
    package func day(after day: Day) -> Day {
        let start = self.gregorian.date(from: DateComponents(year: day.year, month: day.monthOfYear, day: day.dayOfMonth, hour: 12))!
        let next = self.gregorian.dateComponents([.year, .month, .day], from: self.gregorian.date(byAdding: .day, value: 1, to: start)!)
        return Day(year: next.year!, month: next.month!, day: next.day!)
    }

    /// Days from `first` to `last`, inclusive of both; empty when `first` is after `last`.
    package func days(from first: Day, through last: Day) -> [Day] {
        var days: [Day] = []
        var day = first
        while day <= last {
            days.append(day)
            day = self.day(after: day)
        }
        return days
    }

    /// The last day of a month.
    package func lastDay(of month: Month) -> Day {
        self.day(ofMilliseconds: self.bounds(of: month).end - 1)
    }
}
