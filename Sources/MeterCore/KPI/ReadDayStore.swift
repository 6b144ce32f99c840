/// What the read success rate and interval completeness are judged from (``ReadDayFacts``), held in
/// memory: every meter with the day it counts as installed from, and each meter's days of readings,
/// so a KPI document cuts its days out of memory instead of reading the meter list and the period's
/// `meter_day` rows from SQLite every time.
///
/// Loaded once (``MeterStore/loadReadDayStore()``), then kept current by the writer's committed
/// deltas (``KPIRollups``). Not thread-safe: ``KPIRollups`` guards it.
package final class ReadDayStore {
    /// One meter-day, 24 bytes.
    struct Entry {
        var spacingSumMs: Int64
        var day: Int32
        var readings: Int32
        var spacingCount: Int32
    }

    struct Meter {
        var id: Int64
        var name: String
        var customerID: Int64?
        var region: String
        /// ``Day/key`` of the day it counts as installed from; `nil` while it is not.
        var installedDay: Int?
    }

    /// Meters by id (ids only grow: a meter the writer registers comes last).
    private(set) var meters: [Meter] = []
    private var meterIndex: [Int64: Int] = [:]
    /// Each meter's days of readings, oldest first.
    private var days: [[Entry]] = []
    /// ``ReadDayFacts/firstReceivedMs`` and ``ReadDayFacts/lastReceivedMs``.
    var firstReceivedMs: Int64?
    var lastReceivedMs: Int64?
    /// The highest commit position (``AggregateDelta/position``) the loaded rows include.
    package var coveredThrough: Int64 = 0

    package init() {}

    // MARK: Loading (the store fills it)

    /// Adds a meter; meters come in id order, before their days.
    package func addMeter(id: Int64, name: String, customerID: Int64?, region: String, installedDay: Int?) {
        self.meterIndex[id] = self.meters.count
        self.meters.append(Meter(id: id, name: name, customerID: customerID, region: region, installedDay: installedDay))
        self.days.append([])
    }

    /// Adds one `meter_day` row; a meter's rows come oldest first.
    package func addDay(meterID: Int64, day: Int, readings: Int, spacingSumMs: Int64, spacingCount: Int) {
        guard let index = self.meterIndex[meterID] else { return }
        self.days[index].append(
            Entry(spacingSumMs: spacingSumMs, day: Int32(day), readings: Int32(clamping: readings), spacingCount: Int32(clamping: spacingCount)))
    }

    package func setReceived(firstMs: Int64?, lastMs: Int64?) {
        self.firstReceivedMs = firstMs
        self.lastReceivedMs = lastMs
    }

    // MARK: Deltas

    /// Commit deltas merged, so they stay as small as the set of meter-days reporting however long
    /// no query comes.
    struct Changes {
        private struct Key: Hashable {
            var meterID: Int64
            var day: Int
        }

        private var days: [Key: ReadDayFacts.MeterDay] = [:]
        private var meters: [Int64: AggregateDelta.MeterReads] = [:]
        private var firstReceivedMs: Int64?
        private var lastReceivedMs: Int64?

        var isEmpty: Bool { self.days.isEmpty && self.meters.isEmpty && self.firstReceivedMs == nil && self.lastReceivedMs == nil }

        /// Adds a delta: its days only with `days` (a store loaded after it holds them already);
        /// the rest (earliest days, receive times, names) is the same however often it is applied.
        mutating func add(_ delta: AggregateDelta, days: Bool = true) {
            if days {
                for day in delta.days {
                    let key = Key(meterID: day.meterID, day: day.day.key)
                    if var earlier = self.days[key] {
                        earlier.readings += day.readings
                        earlier.spacingSumMs += day.spacingSumMs
                        earlier.spacingCount += day.spacingCount
                        self.days[key] = earlier
                    } else {
                        self.days[key] = day
                    }
                }
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

        /// Applies the changes to `store`, meters first (a meter's days need it).
        func apply(to store: ReadDayStore) {
            for meter in self.meters.values.sorted(by: { $0.meterID < $1.meterID }) { store.meterRead(meter) }
            for day in self.days.values { store.addReadings(day) }
            if let first = self.firstReceivedMs { store.firstReceivedMs = min(store.firstReceivedMs ?? first, first) }
            if let last = self.lastReceivedMs { store.lastReceivedMs = max(store.lastReceivedMs ?? last, last) }
        }
    }

    /// A meter's readings stored: it is installed by its earliest day at the latest. A meter not
    /// known was registered by the writer: unassigned, without a customer.
    private func meterRead(_ meter: AggregateDelta.MeterReads) {
        if let index = self.meterIndex[meter.meterID] {
            self.meters[index].installedDay = min(self.meters[index].installedDay ?? meter.firstDay, meter.firstDay)
        } else {
            // Registered meters have ever larger ids, and come sorted: the list stays in id order.
            self.addMeter(id: meter.meterID, name: meter.name, customerID: nil, region: Region.unassigned, installedDay: meter.firstDay)
        }
    }

    /// Adds readings to one meter-day (a live day is usually the meter's last).
    private func addReadings(_ change: ReadDayFacts.MeterDay) {
        guard let index = self.meterIndex[change.meterID] else { return }
        let day = Int32(change.day.key)
        let position = Self.firstIndex(in: self.days[index], notBefore: day)
        if position < self.days[index].count, self.days[index][position].day == day {
            self.days[index][position].readings += Int32(clamping: change.readings)
            self.days[index][position].spacingSumMs += change.spacingSumMs
            self.days[index][position].spacingCount += Int32(clamping: change.spacingCount)
        } else {
            self.days[index].insert(
                Entry(
                    spacingSumMs: change.spacingSumMs, day: day, readings: Int32(clamping: change.readings),
                    spacingCount: Int32(clamping: change.spacingCount)),
                at: position)
        }
    }

    /// The index of the first entry on or after `day` (a binary search; the last entry checked first).
    private static func firstIndex(in entries: [Entry], notBefore day: Int32) -> Int {
        if let last = entries.last, last.day < day { return entries.count }
        var low = 0
        var high = entries.count
        while low < high {
            let middle = (low + high) / 2
            if entries[middle].day < day { low = middle + 1 } else { high = middle }
        }
        return low
    }

    // MARK: Queries

    /// The facts ``MeterStore/readDays(from:through:region:)`` answers, from memory: meters
    /// installed on or before `through` in id order, and their days within `from...through`.
    func facts(from: Day, through: Day, region: String?) -> ReadDayFacts {
        let fromKey = Int32(from.key)
        let throughKey = Int32(through.key)
        var meters: [ReadDayFacts.InstalledMeter] = []
        var days: [ReadDayFacts.MeterDay] = []
        for (index, meter) in self.meters.enumerated() {
            guard let installed = meter.installedDay, installed <= through.key else { continue }
            if let region, meter.region != region { continue }
            meters.append(
                ReadDayFacts.InstalledMeter(
                    id: meter.id, name: meter.name, customerID: meter.customerID, region: meter.region, installedOn: Day(key: installed)))
            let entries = self.days[index]
            var position = Self.firstIndex(in: entries, notBefore: fromKey)
            while position < entries.count, entries[position].day <= throughKey {
                let entry = entries[position]
                days.append(
                    ReadDayFacts.MeterDay(
                        meterID: meter.id, day: Day(key: Int(entry.day)), readings: Int(entry.readings), spacingSumMs: entry.spacingSumMs,
                        spacingCount: Int(entry.spacingCount)))
                position += 1
            }
        }
        return ReadDayFacts(firstReceivedMs: self.firstReceivedMs, lastReceivedMs: self.lastReceivedMs, meters: meters, days: days)
    }
}
