import Foundation

/// Shares of an interval's energy per calendar month, in proportion to time.
extension MonthCalendar {
    /// Splits `kwh` consumed over `[startMs, endMs)` into the months of this zone it spans, oldest
    /// first; the shares add up to `kwh` exactly (the last takes the rounding).
    package mutating func spread(_ kwh: Double, fromMilliseconds startMs: Int64, to endMs: Int64) -> [(month: Month, kwh: Double)] {
        guard endMs > startMs else { return [(self.month(ofMilliseconds: endMs), kwh)] }
        var pieces: [(month: Month, ms: Int64)] = []
        var month = self.month(ofMilliseconds: startMs)
        var cursor = startMs
        while cursor < endMs {
            let stop = min(endMs, self.bounds(of: month).end)
            pieces.append((month, stop - cursor))
            cursor = stop
            month = month.adding(months: 1)
        }
        let total = Double(endMs - startMs)
        var shares: [(month: Month, kwh: Double)] = []
        var given = 0.0
        for (index, piece) in pieces.enumerated() {
            let share = index == pieces.count - 1 ? kwh - given : kwh * Double(piece.ms) / total
            shares.append((piece.month, share))
            given += share
        }
        return shares
    }
}
