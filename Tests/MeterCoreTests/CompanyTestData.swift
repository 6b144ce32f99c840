import Foundation
import Testing

@testable import MeterCore

/// The generated company's CSV rows, read back by plain string splitting: the independent side of
/// the KPI checks (the generator writes no quoted fields).
struct CompanyRows {
    struct Customer { var id: Int; var region: String; var installed: String }
    struct Monthly { var customer: Int; var month: Int; var kwh: Double; var revenue: Double; var status: String }
    struct Maintenance { var customer: Int; var request: String; var resolution: String; var technician: Int }
    struct Feedback { var customer: Int; var date: String; var score: Int }
    struct Installation { var customer: Int; var request: String; var installed: String; var technician: Int }
    struct Bill { var customer: Int; var month: Int; var amount: Double; var status: String }
    struct Complaint { var id: Int; var customer: Int; var date: String; var resolved: String }

    var customers: [Customer] = []
    var monthly: [Monthly] = []
    var maintenance: [Maintenance] = []
    var feedback: [Feedback] = []
    var installations: [Installation] = []
    var bills: [Bill] = []
    var complaints: [Complaint] = []
    var technicians: [Int: String] = [:]
    var headers: [String: String] = [:]

    init(directory: String) throws {
        func rows(_ name: String) throws -> [[String]] {
            let text = try String(contentsOfFile: directory + "/" + name, encoding: .utf8)
            var lines = text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
            self.headers[name] = lines.removeFirst()
            return lines.map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        }
        self.customers = try rows("customer_data.csv").map { Customer(id: Int($0[0])!, region: $0[1], installed: $0[2]) }
        self.monthly = try rows("monthly_data.csv").map {
            Monthly(customer: Int($0[0])!, month: monthKey($0[1]), kwh: Double($0[2])!, revenue: Double($0[3])!, status: $0[4])
        }
        self.maintenance = try rows("maintenance_data.csv").map {
            Maintenance(customer: Int($0[0])!, request: $0[1], resolution: $0[2], technician: Int($0[3])!)
        }
        self.feedback = try rows("feedback_data.csv").map { Feedback(customer: Int($0[0])!, date: $0[1], score: Int($0[2])!) }
        self.installations = try rows("installations.csv").map {
            Installation(customer: Int($0[0])!, request: $0[1], installed: $0[2], technician: Int($0[3])!)
        }
        self.bills = try rows("bills.csv").map { Bill(customer: Int($0[0])!, month: monthKey($0[1]), amount: Double($0[2])!, status: $0[3]) }
        self.complaints = try rows("complaints.csv").map { Complaint(id: Int($0[0])!, customer: Int($0[1])!, date: $0[2], resolved: $0[4]) }
        for row in try rows("technicians.csv") { self.technicians[Int(row[0])!] = row[1] }
    }
}

/// `yyyymm` of `YYYY-MM` or `YYYY-MM-DD…`.
func monthKey(_ text: String) -> Int {
    Int(text.prefix(4))! * 100 + Int(text.dropFirst(5).prefix(2))!
}

/// Days between two `YYYY-MM-DD` dates.
func days(from start: String, to end: String) -> Double {
    func day(_ text: String) -> Int {
        RFC3339.daysFromCivil(year: Int(text.prefix(4))!, month: Int(text.dropFirst(5).prefix(2))!, day: Int(text.dropFirst(8).prefix(2))!)
    }
    return Double(day(end) - day(start))
}

/// Equal within a relative 1e-9 (sums added in another order), or both nil.
func close(_ lhs: Double?, _ rhs: Double?, tolerance: Double = 1e-9) -> Bool {
    guard let lhs, let rhs else { return lhs == nil && rhs == nil }
    return abs(lhs - rhs) <= tolerance * max(1, abs(lhs), abs(rhs))
}

/// A KPI document parsed back from its JSON text, untyped: for checks of the wire itself (every key, its nulls).
func kpiDocument(_ engine: KPIEngine, _ period: KPIPeriod, region: String? = nil, nowMs: Int64 = WallClock.nowMs()) async throws -> [String: Any] {
    let text = try await engine.json(period: period, region: region, nowMs: nowMs)
    return try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
}

/// The KPI document as meterctl reads it: its JSON text decoded.
func kpiAnswer(_ engine: KPIEngine, _ period: KPIPeriod, region: String? = nil, nowMs: Int64 = WallClock.nowMs()) async throws -> KPIDocument {
    try JSONDecoder().decode(KPIDocument.self, from: Data(try await engine.json(period: period, region: region, nowMs: nowMs).utf8))
}

/// A number in a parsed document; `nil` for JSON null.
func number(_ value: Any?) -> Double? {
    (value as? NSNumber)?.doubleValue
}

func object(_ value: Any?) -> [String: Any] { value as? [String: Any] ?? [:] }
func list(_ value: Any?) -> [[String: Any]] { value as? [[String: Any]] ?? [] }

/// Writes a CSV file into a directory.
func writeCSV(_ directory: String, _ name: String, _ lines: [String]) throws {
    try (lines.joined(separator: "\n") + "\n").write(toFile: directory + "/" + name, atomically: true, encoding: .utf8)
}

/// An offline KPI engine over a database file.
func offlineEngine(_ database: MeterDatabase, timeZone: String = "UTC", faultyListLimit: Int = 100_000) -> KPIEngine {
    let zone = TimeZone(identifier: timeZone)!
    return KPIEngine(store: SQLiteMeterStore(database: database), settings: KPISettings(timeZone: zone, faultyListLimit: faultyListLimit))
}

/// A real SQLite store with customer 5 (West) owning meters M5a and M5b and customer 6 (West)
/// owning M6, imported from CSV, and a writer on it.
func twoMeterCustomerStore(in directory: String) throws -> (SQLiteMeterStore, any MeterStoreWriter) {
    try writeCSV(directory, "customer_data.csv", ["CustomerID,Region,InstallationDate", "5,West,2024-01-01", "6,West,2024-01-01"])
    try writeCSV(directory, "meters.csv", ["MeterID,CustomerID", "M5a,5", "M5b,5", "M6,6"])
    let database = try MeterDatabase(path: directory + "/meterd.sqlite")
    #expect(try CompanyImporter.importDirectory(directory, database: database).succeeded)
    let store = SQLiteMeterStore(database: database)
    return (store, try store.makeWriter(WriterSettings()))
}
