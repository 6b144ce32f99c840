import Testing

@testable import MeterCore

/// The writer's batch finds a run's entries by position (``DictionaryCursor``): it must update
/// exactly what the plain subscript would, whatever the runs and however the dictionary grows.
@Suite struct DictionaryCursorTests {
    @Test func runsOfUpdatesLandWhereTheSubscriptPutsThem() {
        var random = SystemRandomNumberGenerator()
        for _ in 0..<20 {
            var cursor = DictionaryCursor<Int, [Int]>()
            var throughCursor: [Int: [Int]] = [:]
            var throughSubscript: [Int: [Int]] = [:]
            // Runs of 1 to 30 updates of one key among up to 3,000: the dictionary grows (and
            // moves its entries) many times in between, and keys come back after other runs.
            for step in 0..<5_000 {
                let key = Int.random(in: 0..<min(3_000, step / 2 + 1), using: &random)
                for offset in 0..<Int.random(in: 1...30, using: &random) {
                    let value = step * 100 + offset
                    let returned = cursor.update(&throughCursor, key, default: [-key]) { entry in
                        entry.append(value)
                        return entry.count
                    }
                    throughSubscript[key, default: [-key]].append(value)
                    #expect(returned == throughSubscript[key]!.count)
                }
            }
            #expect(throughCursor == throughSubscript)
        }
    }

    @Test func theDefaultIsMadeOnlyForAKeyNotYetThere() {
        var cursor = DictionaryCursor<String, Int>()
        var dictionary: [String: Int] = [:]
        var made = 0
        func make() -> Int {
            made += 1
            return 0
        }
        for key in ["a", "a", "b", "a", "a", "b", "c", "c"] {
            cursor.update(&dictionary, key, default: make()) { $0 += 1 }
        }
        #expect(dictionary == ["a": 4, "b": 2, "c": 2])
        #expect(made == 3)
    }

    /// PostgreSQL moves a batch's open months and days out of it: a cursor that pointed at one must
    /// not be used after, and the batch's next update of that key starts it again.
    @Test func aRemovedEntryStartsAgainAtItsNextUpdate() {
        var batch = BatchAggregates()
        let key = MonthKey(meterID: 7, month: 202_612)
        for _ in 0..<3 { batch.updateMonth(key) { $0.readings += 1 } }
        #expect(batch.removeMonth(key)?.readings == 3)
        for _ in 0..<2 { batch.updateMonth(key) { $0.readings += 1 } }
        #expect(batch.months[key]?.readings == 2)
        let day = DayKey(day: 20_261_204, meterID: 7)
        for _ in 0..<3 { batch.updateDay(day) { $0.readings += 1 } }
        #expect(batch.removeDay(day)?.readings == 3)
        batch.updateDay(day) { $0.readings += 1 }
        #expect(batch.days[day]?.readings == 1)
    }
}
