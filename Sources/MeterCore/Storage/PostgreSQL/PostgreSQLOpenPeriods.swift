/// A meter's open month and open day on PostgreSQL: the newest month and day it has readings of,
/// whose sums live in its own `meter` row (migration `v7-open-periods-in-meter-rows`) rather than
/// in `meter_month` and `meter_day`.
///
/// Every commit updates each of its meters' rows anyway (high-water mark, totals, last reading).
/// A meter that sends one reading per commit (scenario (b)) also cost an upsert of its
/// `meter_month` row and one of its `meter_day` row, the largest part of PostgreSQL's work per
/// reading of a distinct meter; the open periods ride on the row update instead. A meter's month
/// and day rows are written when a newer period starts (the open one is moved out, once per meter
/// and day) and for late readings of closed periods. Readers see both through the views
/// `meter_month_all` and `meter_day_all`, which add a meter's open sums to its rows.
///
/// The writer decides from what it knows of each meter's open periods (``Known``), and that is
/// safe with several nodes because the open periods only change with readings, which move the
/// meter's `hwm_seq`: the batch's row update checks that `hwm_seq` still holds the value the
/// writer had, so a batch that decided on stale periods rolls back with SQLSTATE 40001 like any
/// other lost race. A meter whose periods the writer does not know keeps every delta in its
/// month and day rows, which is always right.
struct PostgreSQLOpenPeriods {
    /// A meter's open month and day as its row holds them (`nil`: none yet).
    struct Known: Equatable {
        var month: Int?
        var day: Int?
    }

    /// What one commit adds to a meter's open periods.
    struct Share {
        /// The month the row's open month becomes, whether it starts there (the old one is moved
        /// out to `meter_month`), and what the batch adds to it.
        var month: (key: Int, starts: Bool, delta: AggregateDelta.Month)?
        var day: (key: Int, starts: Bool, delta: DayDelta)?
    }

    /// The batch's month and day deltas that go to the open periods of their meters' rows, and the
    /// rest, left in `aggregates` for `meter_month` and `meter_day`. A meter's newest month (day)
    /// of the batch is its open one if the row's is older or the same; an older one is a late
    /// reading's and stays in the table.
    static func split(_ aggregates: inout BatchAggregates, known: [Int64: Known]) -> [Int64: Share] {
        var shares: [Int64: Share] = [:]
        let months = Self.newest(aggregates.months.keys.lazy.map { ($0.meterID, $0.month) }, of: aggregates, known: known)
        for (meterID, month) in months {
            let open = known[meterID]?.month
            guard open.map({ month >= $0 }) ?? true,
                let delta = aggregates.removeMonth(MonthKey(meterID: meterID, month: month))
            else { continue }
            shares[meterID, default: Share()].month = (month, open != month, delta)
        }
        let days = Self.newest(aggregates.days.keys.lazy.map { ($0.meterID, $0.day) }, of: aggregates, known: known)
        for (meterID, day) in days {
            let open = known[meterID]?.day
            guard open.map({ day >= $0 }) ?? true, let delta = aggregates.removeDay(DayKey(day: day, meterID: meterID))
            else { continue }
            shares[meterID, default: Share()].day = (day, open != day, delta)
        }
        return shares
    }

    /// Each meter's newest period among `periods` (meter, period key), for the batch's meters whose
    /// open periods are known: a share of any other meter would have no row update to ride on.
    private static func newest(
        _ periods: some Sequence<(Int64, Int)>, of aggregates: BatchAggregates, known: [Int64: Known]
    ) -> [Int64: Int] {
        var newest: [Int64: Int] = [:]
        for (meterID, period) in periods where aggregates.meters[meterID] != nil && known[meterID] != nil {
            newest[meterID] = max(newest[meterID] ?? period, period)
        }
        return newest
    }
}

extension PostgreSQLOpenPeriods.Known {
    /// The open periods the row holds once a commit of `share` has made it.
    mutating func take(_ share: PostgreSQLOpenPeriods.Share) {
        if let month = share.month { self.month = month.key }
        if let day = share.day { self.day = day.key }
    }
}
