/// Every meter-month aggregate held in memory, column per month, so a KPI over 100,000 meters and
/// any range of months is a tight loop (a few milliseconds) instead of a scan of millions of rows.
///
/// Loaded from `meter_month` once, then kept current by the writer's committed deltas
/// (``KPIRollups``). Not thread-safe: ``KPIRollups`` guards it.
package final class MonthlyStore {
    /// One month of every meter, indexed by the meter's dense index.
    struct Column {
        var kwh: [Double]
        var revenue: [Double]
        var readings: [Int32]
        var faults: [Int32]
        var good: [Int32]
        var fair: [Int32]
        var poor: [Int32]
        /// The imported row's status (0 good, 1 fair, 2 poor), or -1 when the month has no imported row.
        var imported: [Int8]
        /// Gap shares spread into the month from gaps spanning more than one month: its kWh is partly estimated.
        var estimated: [Int32]

        init(count: Int) {
            self.kwh = Array(repeating: 0, count: count)
            self.revenue = Array(repeating: 0, count: count)
            self.readings = Array(repeating: 0, count: count)
            self.faults = Array(repeating: 0, count: count)
            self.good = Array(repeating: 0, count: count)
            self.fair = Array(repeating: 0, count: count)
            self.poor = Array(repeating: 0, count: count)
            self.imported = Array(repeating: -1, count: count)
            self.estimated = Array(repeating: 0, count: count)
        }

        mutating func append() {
            self.kwh.append(0)
            self.revenue.append(0)
            self.readings.append(0)
            self.faults.append(0)
            self.good.append(0)
            self.fair.append(0)
            self.poor.append(0)
            self.imported.append(-1)
            self.estimated.append(0)
        }

        /// The month's status of a meter: the imported row's, else what its readings said most often
        /// (ties → the worse); -1 when the meter has no record that month.
        @inline(__always)
        func status(_ index: Int) -> Int {
            MeterRules.monthStatusCode(
                imported: self.imported[index], readings: self.readings[index], good: self.good[index],
                fair: self.fair[index], poor: self.poor[index])
        }

        /// Whether the meter has a record that month: a status, or only energy a gap spread into it
        /// (which counts for consumption and revenue, not for health).
        @inline(__always)
        func hasRecord(_ index: Int) -> Bool {
            self.status(index) >= 0 || self.estimated[index] > 0
        }
    }

    private(set) var regions: [String] = []
    private var regionIndex: [String: Int] = [:]

    private(set) var meterIDs: [Int64] = []
    private(set) var meterNames: [String] = []
    private(set) var meterRegion: [Int32] = []
    /// Dense customer index of each meter, -1 for an unassigned meter.
    private(set) var meterCustomer: [Int32] = []
    private var meterIndex: [Int64: Int32] = [:]
    private var customerIndex: [Int64: Int32] = [:]

    private(set) var customerIDs: [Int64] = []
    private(set) var customerRegion: [Int32] = []
    /// `yyyymm` of the installation date, 0 when unknown.
    private(set) var customerInstalled: [Int32] = []

    private var columns: [Column] = []
    private var slots: [Int: Int] = [:]

    /// The month's column, `nil` when no meter has data that month.
    func column(_ month: Month) -> Column? { self.slots[month.key].map { self.columns[$0] } }

    private func slot(_ month: Int) -> Int {
        if let slot = self.slots[month] { return slot }
        self.slots[month] = self.columns.count
        self.columns.append(Column(count: self.meterIDs.count))
        return self.columns.count - 1
    }

    var meterCount: Int { self.meterIDs.count }

    func regionIndex(of name: String) -> Int? { self.regionIndex[name] }

    private func region(_ name: String) -> Int32 {
        if let index = self.regionIndex[name] { return Int32(index) }
        self.regionIndex[name] = self.regions.count
        self.regions.append(name)
        return Int32(self.regions.count - 1)
    }

    /// The highest commit position (``AggregateDelta/position``) the loaded rows include.
    var coveredThrough: Int64 = 0
    /// The database snapshot the store was loaded in, where commits carry transaction ids (PostgreSQL).
    package var coveredSnapshot: CommitSnapshot?
    private var lastLoadedMonth = -1
    private var lastLoadedSlot = 0

    // MARK: Loading (the store fills it)

    package func addCustomer(id: Int64, region: String, installedMonth: Int32) {
        self.customerIndex[id] = Int32(self.customerIDs.count)
        self.customerIDs.append(id)
        self.customerRegion.append(self.region(region))
        self.customerInstalled.append(installedMonth)
    }

    /// Adds a meter; its customer, when it has one, must have been added first.
    package func addMeter(id: Int64, name: String, customerID: Int64?, region: String) {
        self.meterIndex[id] = Int32(self.meterIDs.count)
        self.meterIDs.append(id)
        self.meterNames.append(name)
        self.meterCustomer.append(customerID.flatMap { self.customerIndex[$0] } ?? -1)
        self.meterRegion.append(self.region(region))
        for slot in self.columns.indices { self.columns[slot].append() }
    }

    /// Sets one meter-month; rows of the same month come together, after every meter was added.
    package func setMonth(
        _ month: Int, meterID: Int64, kwh: Double, revenue: Double, readings: Int32, faults: Int32, good: Int32,
        fair: Int32, poor: Int32, importedStatus: Int8, estimated: Int32 = 0
    ) {
        guard let index = self.meterIndex[meterID].map(Int.init) else { return }
        if month != self.lastLoadedMonth {
            self.lastLoadedSlot = self.slot(month)
            self.lastLoadedMonth = month
        }
        let slot = self.lastLoadedSlot
        self.columns[slot].kwh[index] = kwh
        self.columns[slot].revenue[index] = revenue
        self.columns[slot].readings[index] = readings
        self.columns[slot].faults[index] = faults
        self.columns[slot].good[index] = good
        self.columns[slot].fair[index] = fair
        self.columns[slot].poor[index] = poor
        self.columns[slot].imported[index] = importedStatus
        self.columns[slot].estimated[index] = estimated
    }

    /// Adds one commit's deltas. A meter it has not seen was registered by the writer: unassigned,
    /// named from `names` (the commit's ``AggregateDelta/meterReads``).
    func apply(_ changes: some Sequence<AggregateDelta.Month>, names: [Int64: String]) {
        for change in changes {
            let index: Int
            if let known = self.meterIndex[change.meterID] {
                index = Int(known)
            } else {
                index = self.meterIDs.count
                self.meterIndex[change.meterID] = Int32(index)
                self.meterIDs.append(change.meterID)
                self.meterNames.append(names[change.meterID] ?? "")
                self.meterCustomer.append(-1)
                self.meterRegion.append(self.region(Region.unassigned))
                for slot in self.columns.indices { self.columns[slot].append() }
            }
            let slot = self.slot(change.month)
            self.columns[slot].kwh[index] += change.kwh
            self.columns[slot].revenue[index] += change.revenue
            self.columns[slot].readings[index] += Int32(change.readings)
            self.columns[slot].faults[index] += Int32(change.faults)
            self.columns[slot].good[index] += Int32(change.good)
            self.columns[slot].fair[index] += Int32(change.fair)
            self.columns[slot].poor[index] += Int32(change.poor)
            self.columns[slot].estimated[index] += Int32(change.estimated)
        }
    }
}
