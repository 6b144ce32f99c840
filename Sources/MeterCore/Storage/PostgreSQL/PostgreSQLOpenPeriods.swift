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
        var newestMonth: [Int64: Int] = [:]
        for key in aggregates.months.keys where aggregates.meters[key.meterID] != nil && known[key.meterID] != nil {
            newestMonth[key.meterID] = max(newestMonth[key.meterID] ?? key.month, key.month)
        }
        var newestDay: [Int64: Int] = [:]
        for key in aggregates.days.keys where aggregates.meters[key.meterID] != nil && known[key.meterID] != nil {
            newestDay[key.meterID] = max(newestDay[key.meterID] ?? key.day, key.day)
        }
        var shares: [Int64: Share] = [:]
        for (meterID, month) in newestMonth {
            let open = known[meterID]?.month
            guard open.map({ month >= $0 }) ?? true else { continue }
            let key = MonthKey(meterID: meterID, month: month)
            guard let delta = aggregates.months.removeValue(forKey: key) else { continue }
            shares[meterID, default: Share()].month = (month, open != month, delta)
        }
        for (meterID, day) in newestDay {
            let open = known[meterID]?.day
            guard open.map({ day >= $0 }) ?? true else { continue }
            let key = DayKey(day: day, meterID: meterID)
            guard let delta = aggregates.days.removeValue(forKey: key) else { continue }
            shares[meterID, default: Share()].day = (day, open != day, delta)
        }
        return shares
    }

    /// The open periods a meter's row holds after a commit of `share` on top of `known`.
    static func after(_ known: Known, _ share: Share) -> Known {
        Known(month: share.month?.key ?? known.month, day: share.day?.key ?? known.day)
    }
}
