import CSQLite
import GRDB

/// Every meter-month aggregate held in memory, column per month, so a KPI over 100,000 meters and
/// any range of months is a tight loop (a few milliseconds) instead of a scan of millions of rows.
///
/// Loaded from `meter_month` once, then kept current by the writer's committed deltas
/// (``KPIRollups``). Not thread-safe: ``KPIRollups`` guards it.
final class MonthlyStore {
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

        init(count: Int) {
            self.kwh = Array(repeating: 0, count: count)
            self.revenue = Array(repeating: 0, count: count)
            self.readings = Array(repeating: 0, count: count)
            self.faults = Array(repeating: 0, count: count)
            self.good = Array(repeating: 0, count: count)
            self.fair = Array(repeating: 0, count: count)
            self.poor = Array(repeating: 0, count: count)
            self.imported = Array(repeating: -1, count: count)
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
        }

        /// The month's status of a meter: the imported row's, else what its readings said most often
        /// (ties → the worse); -1 when the meter has no record that month.
        @inline(__always)
        func status(_ index: Int) -> Int {
            let imported = self.imported[index]
            if imported >= 0 { return Int(imported) }
            guard self.readings[index] > 0 else { return -1 }
            let good = self.good[index], fair = self.fair[index], poor = self.poor[index]
            if poor >= fair && poor >= good { return 2 }
            if fair >= good { return 1 }
            return 0
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

    /// Reads everything from the database.
    static func load(_ db: Database) throws -> MonthlyStore {
        let store = MonthlyStore()
        var customerIndex: [Int64: Int32] = [:]
        try forEachRow(db, "SELECT id, region, installed_month FROM customer ORDER BY id") { row in
            let id = sqlite3_column_int64(row, 0)
            customerIndex[id] = Int32(store.customerIDs.count)
            store.customerIDs.append(id)
            store.customerRegion.append(store.region(text(row, 1) ?? Region.unassigned))
            store.customerInstalled.append(Int32(sqlite3_column_int64(row, 2)))
        }
        try forEachRow(db, "SELECT id, name, customer_id, region FROM meter ORDER BY id") { row in
            let id = sqlite3_column_int64(row, 0)
            store.meterIndex[id] = Int32(store.meterIDs.count)
            store.meterIDs.append(id)
            store.meterNames.append(text(row, 1) ?? "")
            let customer = sqlite3_column_type(row, 2) == SQLITE_NULL ? nil : sqlite3_column_int64(row, 2)
            store.meterCustomer.append(customer.flatMap { customerIndex[$0] } ?? -1)
            store.meterRegion.append(store.region(text(row, 3) ?? Region.unassigned))
        }
        var lastMonth = -1
        var slot = 0
        try forEachRow(db, """
            SELECT month, meter_id, kwh, revenue, readings, faults, good, fair, poor, imported_status FROM meter_month
            """) { row in
            let month = Int(sqlite3_column_int64(row, 0))
            guard let index = store.meterIndex[sqlite3_column_int64(row, 1)].map(Int.init) else { return }
            if month != lastMonth {
                slot = store.slot(month)
                lastMonth = month
            }
            store.columns[slot].kwh[index] = sqlite3_column_double(row, 2)
            store.columns[slot].revenue[index] = sqlite3_column_double(row, 3)
            store.columns[slot].readings[index] = Int32(sqlite3_column_int64(row, 4))
            store.columns[slot].faults[index] = Int32(sqlite3_column_int64(row, 5))
            store.columns[slot].good[index] = Int32(sqlite3_column_int64(row, 6))
            store.columns[slot].fair[index] = Int32(sqlite3_column_int64(row, 7))
            store.columns[slot].poor[index] = Int32(sqlite3_column_int64(row, 8))
            store.columns[slot].imported[index] = sqlite3_column_type(row, 9) == SQLITE_NULL ? -1 : Int8(sqlite3_column_int64(row, 9))
        }
        return store
    }

    /// Adds one commit's deltas. A meter it has not seen was registered by the writer: unassigned.
    func apply(_ changes: [IngestChanges.MonthChange]) {
        for change in changes {
            let index: Int
            if let known = self.meterIndex[change.meterID] {
                index = Int(known)
            } else {
                index = self.meterIDs.count
                self.meterIndex[change.meterID] = Int32(index)
                self.meterIDs.append(change.meterID)
                self.meterNames.append("")  // named on the next reload; unassigned meters are not listed by name
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
        }
    }
}

private func text(_ row: OpaquePointer, _ column: Int32) -> String? {
    guard let pointer = sqlite3_column_text(row, column) else { return nil }
    return String(cString: pointer)
}

/// Steps a query through the C API: ~0.2 µs a row, where GRDB's `Row` costs several.
private func forEachRow(_ db: Database, _ sql: String, _ body: (OpaquePointer) throws -> Void) throws {
    let statement = try db.makeStatement(sql: sql)
    let handle = statement.sqliteStatement
    defer { sqlite3_reset(handle) }
    while true {
        let code = sqlite3_step(handle)
        if code == SQLITE_DONE { return }
        guard code == SQLITE_ROW else {
            throw DatabaseError(resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(db.sqliteConnection)))
        }
        try body(handle)
    }
}
