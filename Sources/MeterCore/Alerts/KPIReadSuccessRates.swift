import Foundation
import Synchronization

/// The `read_success` rule's figures from the KPI engine (``KPIEngine/readSuccessByRegion(on:nowMs:)``):
/// each region's rate on the last complete day of the daemon's zone.
///
/// A complete day, not today so far: just after midnight hardly any meter has reported yet, and a
/// meter that reports once a day only does so later; today's figure would fire for every region
/// every night. So an alert for a bad day fires once that day is over and resolves after the first
/// good one. The figures of a day barely change once it is over (only late readings with an old
/// `ts` add to them), so they are computed at most every `refresh`.
package final class KPIReadSuccessRates: ReadSuccessRates {
    private let kpi: KPIEngine
    private let refreshMs: Int64
    private let cache = Mutex<(day: Day, atMs: Int64, regions: [ReadSuccess.RegionDay])?>(nil)

    package init(kpi: KPIEngine, refresh: Duration = .seconds(300)) {
        self.kpi = kpi
        self.refreshMs = AlertEngine.milliseconds(refresh)
    }

    package func regionReadSuccess(nowMs: Int64) async throws -> (day: Day, regions: [ReadSuccess.RegionDay])? {
        let calendar = MonthCalendar(timeZone: self.kpi.rules.timeZone)
        let today = calendar.day(ofMilliseconds: nowMs)
        let yesterday = calendar.day(ofMilliseconds: calendar.bounds(of: today).start - 1)
        if let cached = self.cache.withLock({ $0 }), cached.day == yesterday, nowMs >= cached.atMs, nowMs - cached.atMs < self.refreshMs {
            return (yesterday, cached.regions)
        }
        let regions = try await self.kpi.readSuccessByRegion(on: yesterday, nowMs: nowMs)
        self.cache.withLock { $0 = (yesterday, nowMs, regions) }
        // Before meterd's first whole day nothing is judged: no alert fires or resolves.
        return regions.isEmpty ? nil : (yesterday, regions)
    }
}
