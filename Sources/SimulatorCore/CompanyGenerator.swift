import Foundation
import MeterCore

/// Writes the company data of SPEC.md section 4 for a synthetic company, with the distributions of the
/// use case's generator (seed/000_…): four regions, installation dates over one year (two years before
/// the data), twelve monthly rows per customer (100–1000 kWh, 0.10–0.20 per kWh, Good/Fair/Poor at
/// 0.7/0.2/0.1), maintenance requests for 20 % of customers, one feedback per customer (1–5).
///
/// Beyond the use case, consistent with it: 49 technicians (the ids maintenance uses), one
/// installation per customer on its installation date, one bill per monthly row (amount = revenue,
/// 90 % paid), and complaints from 10 % of customers (85 % resolved within two weeks).
package struct CompanyGenerator: Sendable {
    package static let regions = ["North", "South", "East", "West"]
    package static let technicianCount = 49
    package static let files = [
        "customer_data.csv", "monthly_data.csv", "maintenance_data.csv", "feedback_data.csv",
        "technicians.csv", "installations.csv", "bills.csv", "complaints.csv",
    ]

    package var customers: Int
    package var seed: UInt64
    /// The year of the monthly data; installations fall in `year - 2`, as in the use case.
    package var year: Int
    /// Monthly rows per customer, from January of `year` (12 in the use case).
    package var months: Int
    /// For a live demo: the day (days since 1970-01-01) the company's dated events run up to, `nil`
    /// for the use case's files. Maintenance, feedback and complaints then fall anywhere from the
    /// first month of data to this day (a third of the complaints in the month running then; open
    /// when their resolution would come later), and a tenth of the customers are new: installed within the
    /// 11 months before it, with monthly rows and bills from their installation month on.
    package var eventsThrough: Int?

    package init(customers: Int, seed: UInt64 = 42, year: Int = 2023, months: Int = 12, eventsThrough: Int? = nil) {
        self.customers = customers
        self.seed = seed
        self.year = year
        self.months = months
        self.eventsThrough = eventsThrough
    }

    /// Writes every file into `directory`, creating it if needed.
    package func write(to directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        func path(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }
        // One stream per file: each file's content depends only on the seed and the parameters.
        func stream(_ index: UInt64) -> SeededGenerator { SeededGenerator(seed: self.seed &* 0x2545_F491_4F6C_DD1D &+ index) }

        // Customers and their installations.
        var random = stream(1)
        let installEpoch = RFC3339.daysFromCivil(year: self.year - 2, month: 1, day: 1)
        var installDays = [Int](repeating: 0, count: self.customers + 1)
        var customers = CSVWriter(path: path("customer_data.csv"), header: "CustomerID,Region,InstallationDate")
        for id in stride(from: 1, through: self.customers, by: 1) {
            _ = random.below(4)  // the region, drawn again below when the row is written
            installDays[id] = installEpoch + random.below(365)
        }
        if let through = self.eventsThrough {
            // A stream of its own: the use case's draws stay as they are.
            var recent = stream(8)
            for id in stride(from: 1, through: self.customers, by: 1) where recent.unit() < 0.1 {
                installDays[id] = through - recent.below(335)
            }
        }
        random = stream(1)
        for id in stride(from: 1, through: self.customers, by: 1) {
            let region = Self.regions[random.below(4)]
            _ = random.below(365)
            customers.row {
                $0.int(id); $0.text(region); $0.date(installDays[id])
            }
        }
        try customers.close()

        var installs = CSVWriter(path: path("installations.csv"), header: "CustomerID,RequestDate,InstallationDate,TechnicianID")
        random = stream(2)
        for id in stride(from: 1, through: self.customers, by: 1) {
            let wait = 1 + random.below(30)
            let technician = 1 + random.below(Self.technicianCount)
            installs.row {
                $0.int(id); $0.date(installDays[id] - wait); $0.date(installDays[id]); $0.int(technician)
            }
        }
        try installs.close()

        // Monthly consumption and the bills priced from it.
        random = stream(3)
        var bills = SeededGenerator(seed: self.seed &+ 0x5151)
        var monthly = CSVWriter(path: path("monthly_data.csv"), header: "CustomerID,Date,Consumption_kWh,Revenue_$,MeterStatus")
        var billFile = CSVWriter(path: path("bills.csv"), header: "CustomerID,Month,Amount_$,Status")
        let statuses = ["Good", "Fair", "Poor"]
        for index in 0..<self.months {
            let year = self.year + index / 12
            let month = index % 12 + 1
            let firstDay = RFC3339.daysFromCivil(year: year, month: month, day: 1)
            let nextMonth = RFC3339.daysFromCivil(year: year + month / 12, month: month % 12 + 1, day: 1)
            for id in stride(from: 1, through: self.customers, by: 1) {
                let kwh = (random.uniform(100, 1000) * 1000).rounded() / 1000
                let revenue = (kwh * random.uniform(0.1, 0.2) * 100).rounded() / 100
                let draw = random.unit()
                let status = draw < 0.7 ? 0 : (draw < 0.9 ? 1 : 2)
                let paid = bills.unit() < 0.9
                // A new customer consumes nothing before it was installed.
                guard self.eventsThrough == nil || installDays[id] < nextMonth else { continue }
                monthly.row {
                    $0.int(id); $0.date(firstDay); $0.fixed(kwh, 3); $0.fixed(revenue, 2); $0.text(statuses[status])
                }
                billFile.row {
                    $0.int(id); $0.month(year: year, month: month); $0.fixed(revenue, 2); $0.text(paid ? "paid" : "unpaid")
                }
            }
        }
        try monthly.close()
        try billFile.close()

        // A random day (1–27) of a random month of the data, as the use case draws event dates.
        let firstDataDay = RFC3339.daysFromCivil(year: self.year, month: 1, day: 1)
        func eventDay(_ random: inout SeededGenerator) -> Int {
            if let through = self.eventsThrough, through >= firstDataDay {
                return firstDataDay + random.below(through - firstDataDay + 1)
            }
            let index = random.below(self.months)
            let day = 1 + random.below(27)
            return RFC3339.daysFromCivil(year: self.year + index / 12, month: index % 12 + 1, day: day)
        }

        random = stream(4)
        var maintenance = CSVWriter(path: path("maintenance_data.csv"), header: "CustomerID,RequestDate,ResolutionDate,TechnicianID")
        for _ in 0..<Int(Double(self.customers) * 0.2) {
            let customer = 1 + random.below(self.customers)
            let request = eventDay(&random)
            let resolution = request + 1 + random.below(9)
            let technician = 1 + random.below(Self.technicianCount)
            maintenance.row {
                $0.int(customer); $0.date(request)
                // Not resolved yet when that would be after the demo's today.
                if resolution > self.eventsThrough ?? Int.max { $0.text("") } else { $0.date(resolution) }
                $0.int(technician)
            }
        }
        try maintenance.close()

        random = stream(5)
        var feedback = CSVWriter(path: path("feedback_data.csv"), header: "CustomerID,FeedbackDate,SatisfactionScore")
        for id in stride(from: 1, through: self.customers, by: 1) {
            let date = eventDay(&random)
            let score = 1 + random.below(5)
            feedback.row {
                $0.int(id); $0.date(date); $0.int(score)
            }
        }
        try feedback.close()

        random = stream(6)
        var technicians = CSVWriter(path: path("technicians.csv"), header: "TechnicianID,TechnicianName")
        let first = ["Ada", "Ben", "Chloe", "Dev", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Luis", "Mona", "Nils"]
        let last = ["Meyer", "Okafor", "Silva", "Nowak", "Larsen", "Haddad", "Ito", "Brennan", "Costa", "Varga", "Quinn"]
        for id in 1...Self.technicianCount {
            let name = "\(first[random.below(first.count)]) \(last[random.below(last.count)])"
            technicians.row {
                $0.int(id); $0.text(name)
            }
        }
        try technicians.close()

        random = stream(7)
        var complaints = CSVWriter(path: path("complaints.csv"), header: "ComplaintID,CustomerID,Date,Category,ResolvedDate")
        let categories = ["billing", "outage", "meter", "service", "installation"]
        for id in stride(from: 1, through: self.customers / 10, by: 1) {
            let customer = 1 + random.below(self.customers)
            var date = eventDay(&random)
            if let through = self.eventsThrough, id % 3 == 0 {
                // A third in the month running at the demo's today: the dashboard's last-month figures.
                let (year, month, _) = RFC3339.civilFromDays(through)
                let monthStart = RFC3339.daysFromCivil(year: year, month: month, day: 1)
                date = monthStart + (date - firstDataDay) % (through - monthStart + 1)
            }
            let category = categories[random.below(categories.count)]
            let resolved = (random.unit() < 0.85 ? date + random.below(15) : nil).flatMap { $0 > self.eventsThrough ?? Int.max ? nil : $0 }
            complaints.row { row in
                row.int(id); row.int(customer); row.date(date); row.text(category)
                if let resolved { row.date(resolved) } else { row.text("") }
            }
        }
        try complaints.close()
    }
}

/// Appends CSV rows to a byte buffer and flushes it to the file in large writes.
private struct CSVWriter {
    struct Row {
        var bytes: [UInt8]
        var first = true

        private mutating func separator() {
            if !self.first { self.bytes.append(UInt8(ascii: ",")) }
            self.first = false
        }

        mutating func int(_ value: Int) {
            self.separator()
            self.digits(value, width: 1)
        }

        mutating func text(_ value: String) {
            self.separator()
            self.bytes.append(contentsOf: value.utf8)
        }

        /// A non-negative number with a fixed number of decimals.
        mutating func fixed(_ value: Double, _ decimals: Int) {
            self.separator()
            var scale = 1
            for _ in 0..<decimals { scale *= 10 }
            let scaled = Int((value * Double(scale)).rounded())
            self.digits(scaled / scale, width: 1)
            self.bytes.append(UInt8(ascii: "."))
            self.digits(scaled % scale, width: decimals)
        }

        /// `YYYY-MM-DD` of a day counted from 1970-01-01.
        mutating func date(_ day: Int) {
            self.separator()
            let (year, month, dayOfMonth) = RFC3339.civilFromDays(day)
            self.digits(year, width: 4)
            self.bytes.append(UInt8(ascii: "-"))
            self.digits(month, width: 2)
            self.bytes.append(UInt8(ascii: "-"))
            self.digits(dayOfMonth, width: 2)
        }

        mutating func month(year: Int, month: Int) {
            self.separator()
            self.digits(year, width: 4)
            self.bytes.append(UInt8(ascii: "-"))
            self.digits(month, width: 2)
        }

        private mutating func digits(_ value: Int, width: Int) {
            var buffer:
                (
                    UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                    UInt8, UInt8
                ) =
                    (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
            var count = 0
            var rest = value
            withUnsafeMutableBytes(of: &buffer) { raw in
                repeat {
                    raw[19 - count] = UInt8(ascii: "0") + UInt8(rest % 10)
                    rest /= 10
                    count += 1
                } while rest > 0 || count < width
                self.bytes.append(contentsOf: raw[(20 - count)...])
            }
        }
    }

    private let path: String
    private var row: Row
    private var handle: FileHandle?
    private var failure: (any Error)?

    init(path: String, header: String) {
        self.path = path
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        self.handle = FileHandle(forWritingAtPath: path)
        self.row = Row(bytes: [])
        self.row.bytes.reserveCapacity(1 << 20)
        self.row.bytes.append(contentsOf: header.utf8)
        self.row.bytes.append(0x0A)
    }

    mutating func row(_ fields: (inout Row) -> Void) {
        self.row.first = true
        fields(&self.row)
        self.row.bytes.append(0x0A)
        if self.row.bytes.count >= 1 << 20 { self.flush() }
    }

    private mutating func flush() {
        guard let handle = self.handle, self.failure == nil else { return }
        do {
            try handle.write(contentsOf: self.row.bytes)
        } catch {
            self.failure = error
        }
        self.row.bytes.removeAll(keepingCapacity: true)
    }

    mutating func close() throws {
        self.flush()
        guard let handle = self.handle else { throw CompanyDataError(file: self.path, line: 0, "cannot create the file") }
        try handle.close()
        if let failure = self.failure { throw failure }
    }
}
