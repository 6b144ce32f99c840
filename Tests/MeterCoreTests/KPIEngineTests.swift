import Foundation
import GRDB
import Testing

@testable import MeterCore
@testable import SimulatorCore

/// The top-level keys of SPEC.md section 5, exactly, plus section 11's `validation_flags`.
let kpiKeys: Set<String> = [
    "period", "region", "generated_at", "total_customers", "total_consumption_kwh", "total_revenue", "average_consumption_kwh", "meters",
    "consumption_by_region", "top_consumers", "monthly_consumption", "meter_health", "faulty_meters", "reading_latency_ms",
    "revenue_by_region", "revenue_trend", "payment_status", "satisfaction", "new_vs_returning", "complaints",
    "installation_time_days", "maintenance", "technicians", "validation_flags",
    "read_success_rate", "read_success_daily", "read_success_by_region", "interval_completeness", "lowest_completeness_meters",
    "current_month", "complaints_in_period", "installations_in_period",
]

@Suite struct KPIEngineTests {
    /// The figures computed straight from the CSV rows, as the use case's Power BI measures do.
    func checkAgainstRows(_ rows: CompanyRows, _ document: KPIDocument, _ period: KPIPeriod, region: String?) {
        let from = period.from.key, to = period.to.key
        let regionOf = Dictionary(uniqueKeysWithValues: rows.customers.map { ($0.id, $0.region) })
        func inRegion(_ customer: Int) -> Bool { region == nil || regionOf[customer] == region }
        func inPeriod(_ month: Int) -> Bool { month >= from && month <= to }
        let label = "\(period) \(region ?? "all")"

        let monthly = rows.monthly.filter { inPeriod($0.month) && inRegion($0.customer) }
        let kwh = monthly.reduce(0) { $0 + $1.kwh }
        #expect(close(document.totalConsumptionKwh, kwh), "\(label)")
        #expect(close(document.totalRevenue, monthly.reduce(0) { $0 + $1.revenue }), "\(label)")
        #expect(close(document.averageConsumptionKwh, monthly.isEmpty ? nil : kwh / Double(monthly.count)), "\(label)")
        let customers = rows.customers.filter { inRegion($0.id) }
        #expect(document.totalCustomers == customers.filter { monthKey($0.installed) <= to }.count, "\(label)")

        // Consumption and revenue by region, by month, and the trend.
        let regions = Set(customers.map(\.region)).sorted()
        #expect(document.consumptionByRegion.map(\.region) == regions, "\(label)")
        for (entry, name) in zip(document.consumptionByRegion, regions) {
            #expect(close(entry.kwh, monthly.filter { regionOf[$0.customer] == name }.reduce(0) { $0 + $1.kwh }), "\(label) \(name)")
        }
        for (entry, name) in zip(document.revenueByRegion, regions) {
            #expect(close(entry.revenue, monthly.filter { regionOf[$0.customer] == name }.reduce(0) { $0 + $1.revenue }), "\(label) \(name)")
        }
        #expect(document.monthlyConsumption.map(\.month) == period.months.map(\.description))
        for (entry, month) in zip(document.monthlyConsumption, period.months) {
            #expect(close(entry.kwh, monthly.filter { $0.month == month.key }.reduce(0) { $0 + $1.kwh }), "\(label) \(month)")
        }
        let trendMonths = KPIPeriod.twelveMonths(endingAt: period.to).months
        #expect(document.revenueTrend.map(\.month) == trendMonths.map(\.description))
        for (entry, month) in zip(document.revenueTrend, trendMonths) {
            let revenue = rows.monthly.filter { $0.month == month.key && inRegion($0.customer) }.reduce(0) { $0 + $1.revenue }
            #expect(close(entry.revenue, revenue), "\(label) trend \(month)")
        }

        // Top consumers: largest sums, ties by lower id.
        var sums: [Int: Double] = [:]
        for row in monthly { sums[row.customer, default: 0] += row.kwh }
        let top = sums.filter { $0.value > 0 }.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.prefix(10)
        #expect(document.topConsumers.map(\.customerID) == top.map { Int64($0.key) }, "\(label)")
        #expect(zip(document.topConsumers, top).allSatisfy { close($0.kwh, $1.value) && $0.region == regionOf[$1.key] })

        // Meter health and faulty meters (2+ poor months; imported rows carry no faults).
        let health = document.meterHealth
        for (status, share) in [("Good", health.good), ("Fair", health.fair), ("Poor", health.poor)] {
            let expected = monthly.isEmpty ? nil : 100 * Double(monthly.filter { $0.status == status }.count) / Double(monthly.count)
            #expect(close(share, expected), "\(label) \(status)")
        }
        var poorMonths: [Int: Int] = [:]
        for row in monthly where row.status == "Poor" { poorMonths[row.customer, default: 0] += 1 }
        let faulty = poorMonths.filter { $0.value >= 2 }
        #expect(document.meters.faulty == faulty.count, "\(label)")
        let faultyList = document.faultyMeters
        #expect(faultyList.count == faulty.count)
        #expect(faultyList.allSatisfy { $0.poorMonths == poorMonths[Int($0.customerID!)] ?? 0 })
        #expect(zip(faultyList, faultyList.dropFirst()).allSatisfy { $0.poorMonths >= $1.poorMonths })

        // Bills, feedback, customers, complaints.
        let bills = rows.bills.filter { inPeriod($0.month) && inRegion($0.customer) }
        for (status, figures) in [("paid", document.paymentStatus.paid), ("unpaid", document.paymentStatus.unpaid)] {
            let these = bills.filter { $0.status == status }
            #expect(figures.count == these.count, "\(label) \(status)")
            #expect(close(figures.amount, these.reduce(0) { $0 + $1.amount }), "\(label) \(status)")
        }
        let feedback = rows.feedback.filter { inPeriod(monthKey($0.date)) && inRegion($0.customer) }
        let satisfaction = document.satisfaction
        #expect(satisfaction.count == feedback.count)
        #expect(close(satisfaction.average, feedback.isEmpty ? nil : Double(feedback.reduce(0) { $0 + $1.score }) / Double(feedback.count)))
        #expect((1...5).allSatisfy { score in satisfaction.distribution[score: score] == feedback.filter { $0.score == score }.count })
        #expect(document.newVsReturning.new == customers.filter { inPeriod(monthKey($0.installed)) }.count, "\(label)")
        let returning = customers.filter { monthKey($0.installed) < from && (sums[$0.id] ?? 0) > 0 }
        #expect(document.newVsReturning.returning == returning.count, "\(label)")
        let ourComplaints = rows.complaints.filter { inRegion($0.customer) }
        #expect(document.complaints.received == ourComplaints.filter { monthKey($0.date) == to }.count)
        #expect(document.complaints.resolved == ourComplaints.filter { !$0.resolved.isEmpty && monthKey($0.resolved) == to }.count)

        // Operations.
        let installations = rows.installations.filter { inPeriod(monthKey($0.installed)) && inRegion($0.customer) }
        let installDays = installations.map { days(from: $0.request, to: $0.installed) }
        #expect(close(document.installationTimeDays, installDays.isEmpty ? nil : installDays.reduce(0, +) / Double(installDays.count)))
        let requests = rows.maintenance.filter { inRegion($0.customer) }
        let processed = requests.filter { inPeriod(monthKey($0.resolution)) }
        let maintenance = document.maintenance
        #expect(maintenance.received == requests.filter { inPeriod(monthKey($0.request)) }.count, "\(label)")
        #expect(maintenance.processed == processed.count, "\(label)")
        #expect(maintenance.open == requests.filter { monthKey($0.request) <= to && monthKey($0.resolution) > to }.count, "\(label)")
        let resolutionDays = processed.map { days(from: $0.request, to: $0.resolution) }
        #expect(close(maintenance.averageResolutionDays, resolutionDays.isEmpty ? nil : resolutionDays.reduce(0, +) / Double(resolutionDays.count)))
        #expect(document.technicians.map(\.technicianID) == rows.technicians.keys.sorted())
        for entry in document.technicians {
            let id = entry.technicianID
            #expect(entry.name == rows.technicians[id])
            #expect(entry.installations == installations.filter { $0.technician == id }.count, "\(label) technician \(id)")
            let jobs = processed.filter { $0.technician == id }.map { days(from: $0.request, to: $0.resolution) }
            #expect(entry.maintenanceJobs == jobs.count, "\(label) technician \(id)")
            #expect(close(entry.averageResolutionDays, jobs.isEmpty ? nil : jobs.reduce(0, +) / Double(jobs.count)))
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func documentEqualsTheSumsOverTheCSVRows() async throws {
        try await withTemporaryDirectory { directory in
            // Two years of data, so periods cross a year and the trend reaches before the period.
            try CompanyGenerator(customers: 400, seed: 21, year: 2023, months: 24).write(to: directory + "/csv")
            let rows = try CompanyRows(directory: directory + "/csv")
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            #expect(try CompanyImporter.importDirectory(directory + "/csv", database: database).succeeded)
            let engine = offlineEngine(database)
            let periods = [
                try KPIPeriod(from: Month(year: 2023, month: 1), to: Month(year: 2023, month: 12)),
                try KPIPeriod(from: Month(year: 2023, month: 4), to: Month(year: 2023, month: 6)),
                try KPIPeriod(from: Month(year: 2023, month: 10), to: Month(year: 2024, month: 3)),
                try KPIPeriod(from: Month(year: 2024, month: 12), to: Month(year: 2024, month: 12)),
                // Before the data: the customers' installation year.
                try KPIPeriod(from: Month(year: 2021, month: 3), to: Month(year: 2021, month: 8)),
            ]
            for period in periods {
                for region in [nil, "North", "East"] {
                    #expect(Set(try await kpiDocument(engine, period, region: region).keys) == kpiKeys)
                    let document = try await kpiAnswer(engine, period, region: region)
                    #expect(document.period.from == period.from.description)
                    #expect(document.region == region)
                    self.checkAgainstRows(rows, document, period, region: region)
                }
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func emptyPeriodAndUnknownRegionHaveEveryKeyWithZerosAndNulls() async throws {
        try await withTemporaryDirectory { directory in
            try CompanyGenerator(customers: 50, seed: 2).write(to: directory + "/csv")
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            #expect(try CompanyImporter.importDirectory(directory + "/csv", database: database).succeeded)
            let engine = offlineEngine(database)
            let cases: [(KPIPeriod, String?)] = [
                (try KPIPeriod(from: Month(year: 2030, month: 1), to: Month(year: 2030, month: 3)), nil),
                (try KPIPeriod(from: Month(year: 2023, month: 1), to: Month(year: 2023, month: 12)), "Atlantis"),
            ]
            for (period, region) in cases {
                let document = try await kpiDocument(engine, period, region: region)
                #expect(Set(document.keys) == kpiKeys)
                #expect(number(document["total_consumption_kwh"]) == 0)
                #expect(number(document["total_revenue"]) == 0)
                #expect(document["average_consumption_kwh"] is NSNull)
                #expect(list(document["top_consumers"]).isEmpty)
                #expect(list(document["faulty_meters"]).isEmpty)
                #expect(list(document["monthly_consumption"]).count == period.months.count)
                #expect(list(document["monthly_consumption"]).allSatisfy { number($0["kwh"]) == 0 })
                #expect(object(document["meter_health"]).values.allSatisfy { $0 is NSNull })
                #expect(object(document["reading_latency_ms"])["p95"] is NSNull)
                #expect(number(object(document["reading_latency_ms"])["count"]) == 0)
                #expect(number(object(object(document["payment_status"])["paid"])["count"]) == 0)
                #expect(object(document["satisfaction"])["average"] is NSNull)
                #expect(object(object(document["satisfaction"])["distribution"]).count == 5)
                #expect(document["installation_time_days"] is NSNull)
                #expect(object(document["maintenance"])["average_resolution_days"] is NSNull)
                #expect(number(object(document["new_vs_returning"])["new"]) == 0)
                #expect(number(object(document["complaints"])["received"]) == 0)
                #expect(list(document["technicians"]).count == 49)
                // No live reading: no day is judged.
                #expect(document["read_success_rate"] is NSNull)
                #expect(list(document["read_success_daily"]).isEmpty)
                #expect(list(document["read_success_by_region"]).isEmpty)
                #expect(document["interval_completeness"] is NSNull)
                #expect(list(document["lowest_completeness_meters"]).isEmpty)
            }
            let atlantis = try await kpiDocument(engine, cases[1].0, region: "Atlantis")
            #expect(number(atlantis["total_customers"]) == 0)
            #expect(list(atlantis["consumption_by_region"]).isEmpty)
            #expect(object(atlantis["meters"]).values.allSatisfy { number($0) == 0 })
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func tiesInTopConsumersGoToTheLowerIDAndNewCustomersCount() async throws {
        try await withTemporaryDirectory { directory in
            var customers = ["CustomerID,Region,InstallationDate"]
            var monthly = ["CustomerID,Date,Consumption_kWh,Revenue_$,MeterStatus"]
            for id in 1...14 {
                // Customers 9 and 13 are installed inside the period (March 2024), the rest before it.
                customers.append("\(id),\(id % 2 == 0 ? "North" : "South"),\(id == 9 || id == 13 ? "2024-03-10" : "2023-05-01")")
                // 12, 7 and 3 tie at the top; 1, 2, 5, 10 and 14 tie at the cut-off of the ten.
                let kwh: Double = [12, 7, 3].contains(id) ? 500 : ([1, 2, 5, 10, 14].contains(id) ? 100 : 100 + Double(id))
                monthly.append("\(id),2024-03-01,\(kwh / 2),1,Good")
                monthly.append("\(id),2024-04-01,\(kwh / 2),1,Good")
            }
            try writeCSV(directory, "customer_data.csv", customers)
            try writeCSV(directory, "monthly_data.csv", monthly)
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            #expect(try CompanyImporter.importDirectory(directory, database: database).succeeded)
            let engine = offlineEngine(database)
            let document = try await kpiAnswer(engine, try KPIPeriod(from: Month(year: 2024, month: 3), to: Month(year: 2024, month: 4)))
            #expect(document.topConsumers.map(\.customerID) == [3, 7, 12, 13, 11, 9, 8, 6, 4, 1])
            #expect(document.newVsReturning.new == 2)
            #expect(document.newVsReturning.returning == 12)
            #expect(document.totalCustomers == 14)
            let february = try await kpiAnswer(engine, try KPIPeriod(from: Month(year: 2024, month: 1), to: Month(year: 2024, month: 2)))
            #expect(february.totalCustomers == 12)
            #expect(february.newVsReturning.returning == 0)
        }
    }

    /// Live readings: the month is the configured zone's, a late reading lands in the month of its `ts`,
    /// latency counts in the month it was received, and the store follows commits without a reload.
    @Test(.timeLimit(.minutes(1)))
    func liveReadingsFollowTheZonesMonthsAndLateReadingsLandInTheirMonth() async throws {
        try await withTemporaryDirectory { directory in
            try writeCSV(directory, "customer_data.csv", ["CustomerID,Region,InstallationDate", "1,North,2023-01-05"])
            try writeCSV(directory, "monthly_data.csv", ["CustomerID,Date,Consumption_kWh,Revenue_$,MeterStatus", "1,2024-01-01,100,15,Good"])
            var configuration = DaemonConfiguration()
            configuration.timeZone = TimeZone(identifier: "Europe/Berlin")!
            configuration.limits.clockSkewMs = 10 * 365 * 86_400_000
            try await IngestHarness.with(directory: directory, configuration: configuration) { harness in
                let rollups = KPIRollups()
                try await harness.pipeline.perform { writer in
                    writer.commitListener = rollups
                    _ = try CompanyImporter.importDirectory(directory, into: writer)
                }
                let engine = KPIEngine(store: harness.store, rollups: rollups, settings: KPISettings(timeZone: configuration.timeZone))
                let january = try KPIPeriod(from: Month(year: 2024, month: 1), to: Month(year: 2024, month: 1))
                let february = try KPIPeriod(from: Month(year: 2024, month: 2), to: Month(year: 2024, month: 2))
                // Loads the store before the live readings, so they must arrive as deltas.
                #expect(try await kpiAnswer(engine, january).totalConsumptionKwh == 100)

                let client = try await LineClient(port: harness.port)
                // 23:30 UTC on 31 January is 00:30 on 1 February in Berlin.
                try await client.send(
                    readingLine(
                        meter: "MTR-000001", seq: 1, kwh: 2, timestampMs: RFC3339.parseMilliseconds("2024-01-31T23:30:00Z")!,
                        status: .poor))
                #expect(try await client.readLine() == #"{"meter":"MTR-000001","ack":1}"#)
                // A late reading: measured in January (Berlin), sent after the February one.
                try await client.send(
                    readingLine(
                        meter: "MTR-000001", seq: 2, kwh: 3, timestampMs: RFC3339.parseMilliseconds("2024-01-31T22:30:00Z")!,
                        fault: "tamper"))
                #expect(try await client.readLine() == #"{"meter":"MTR-000001","ack":2}"#)
                await client.close()

                let januaryDocument = try await kpiAnswer(engine, january)
                #expect(close(januaryDocument.totalConsumptionKwh, 103))
                #expect(januaryDocument.meterHealth.good == 100)  // the imported status wins
                let februaryDocument = try await kpiAnswer(engine, february)
                #expect(close(februaryDocument.totalConsumptionKwh, 2))
                #expect(close(februaryDocument.totalRevenue, 2 * 0.15))
                #expect(februaryDocument.meterHealth.poor == 100)
                #expect(februaryDocument.topConsumers.map(\.customerID) == [1])
                #expect(februaryDocument.newVsReturning.returning == 1)
                // Both readings were received now: the latency falls in the current month, not in their ts months.
                let now = engine.defaultPeriod()
                let latency = try await kpiAnswer(engine, now).readingLatencyMs
                #expect(latency.count == 2)
                #expect(try #require(latency.p50) > 1e9)  // received years after their ts
                #expect(januaryDocument.readingLatencyMs.count == 0)

                // Two poor months or three faults make a meter faulty.
                let both = try KPIPeriod(from: Month(year: 2024, month: 1), to: Month(year: 2024, month: 2))
                #expect(try await engine.faultyMeters(period: both).isEmpty)
                let tamper = try await LineClient(port: harness.port)
                for seq in 3...4 {
                    try await tamper.send(
                        readingLine(
                            meter: "MTR-000001", seq: Int64(seq), kwh: 0.1,
                            timestampMs: RFC3339.parseMilliseconds("2024-02-10T10:00:00Z")!, fault: "tamper"))
                    #expect(try await tamper.readLine() == "{\"meter\":\"MTR-000001\",\"ack\":\(seq)}")
                }
                await tamper.close()
                #expect(try await engine.faultyMeters(period: both) == [FaultyMeter(meter: "MTR-000001", customerID: 1, poorMonths: 0, faults: 3)])
                #expect(try await engine.faultyMeters(period: february).isEmpty)

                // A meter the company data does not know, registered by the writer after the store
                // loaded, is listed by its name (its rows reached the store as deltas, not a load).
                let stranger = try await LineClient(port: harness.port)
                for seq in 1...3 {
                    try await stranger.send(
                        readingLine(
                            meter: "NEW-0001", seq: Int64(seq), kwh: 0.1,
                            timestampMs: RFC3339.parseMilliseconds("2024-02-11T10:00:00Z")!, fault: "voltage_sag"))
                    #expect(try await stranger.readLine() == "{\"meter\":\"NEW-0001\",\"ack\":\(seq)}")
                }
                await stranger.close()
                #expect(
                    try await engine.faultyMeters(period: february) == [
                        FaultyMeter(meter: "NEW-0001", customerID: nil, poorMonths: 0, faults: 3)
                    ])
                #expect(try await kpiAnswer(engine, february).faultyMeters.map(\.meter) == ["NEW-0001"])
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func periodsParseAndDefaultToTheLastTwelveMonths() throws {
        let now = RFC3339.parseMilliseconds("2026-03-31T23:30:00Z")!
        let utc = TimeZone(identifier: "UTC")!
        #expect(try KPIPeriod.parse(from: nil, to: nil, nowMs: now, timeZone: utc).description == "2025-04..2026-03")
        #expect(try KPIPeriod.parse(from: nil, to: nil, nowMs: now, timeZone: TimeZone(identifier: "Asia/Tokyo")!).description == "2025-05..2026-04")
        #expect(try KPIPeriod.parse(from: nil, to: "2024-02", nowMs: now, timeZone: utc).description == "2023-03..2024-02")
        #expect(throws: KPIError.self) { try KPIPeriod.parse(from: "2024-05", to: "2024-02", nowMs: now, timeZone: utc) }
        #expect(throws: KPIError.self) { try KPIPeriod.parse(from: "2024-13", to: nil, nowMs: now, timeZone: utc) }
    }
}

/// SPEC.md section 5 counts average consumption and meter health over customer-months: a customer
/// with two meters is one record a month, not two.
@Suite struct CustomerMonthTests {
    @Test(.timeLimit(.minutes(1)))
    func aCustomersMetersMakeOneRecordAMonth() async throws {
        try await withTemporaryDirectory { directory in
            // Given customer 5 (West) with meters M5a and M5b, customer 6 (West) with one meter, and an unknown meter
            let (store, writer) = try twoMeterCustomerStore(in: directory)
            let rollups = KPIRollups()
            writer.commitListener = rollups

            // When in November M5a reports 10 kWh good, M5b 2 × 10 kWh poor, M6 4 kWh good, the stranger 6 kWh fair
            let november = try #require(RFC3339.parseMilliseconds("2026-11-02T00:00:00Z"))
            let readings = [
                Reading(meter: "M5a", seq: 1, timestampMs: november, kwh: 10, status: .good),
                Reading(meter: "M5b", seq: 1, timestampMs: november, kwh: 10, status: .poor),
                Reading(meter: "M5b", seq: 2, timestampMs: november + 900_000, kwh: 10, status: .poor),
                Reading(meter: "M6", seq: 1, timestampMs: november, kwh: 4, status: .good),
                Reading(meter: "STRANGER", seq: 1, timestampMs: november, kwh: 6, status: .fair),
            ]
            _ = try writer.commit([
                IngestSubmission(
                    readings: readings.enumerated().map { SubmittedReading(reading: $1, line: $0 + 1, receivedMs: november + 1_000) },
                    receiver: nil)
            ])

            // Then three records: customer 5's (30 kWh, poor by two readings to one), customer 6's, the stranger's
            let period = try KPIPeriod(from: Month(year: 2026, month: 11), to: Month(year: 2026, month: 11))
            for engine in [KPIEngine(store: store, rollups: rollups, settings: KPISettings()), KPIEngine(store: store, settings: KPISettings())] {
                let document = try await kpiAnswer(engine, period)
                #expect(document.totalConsumptionKwh == 40)
                #expect(close(document.averageConsumptionKwh, 40.0 / 3))
                #expect(close(document.meterHealth.good, 100.0 / 3))
                #expect(close(document.meterHealth.fair, 100.0 / 3))
                #expect(close(document.meterHealth.poor, 100.0 / 3))
                let west = try await kpiAnswer(engine, period, region: "West")
                #expect(west.averageConsumptionKwh == 17)
                #expect(west.meterHealth.poor == 50)
                #expect(west.meterHealth.good == 50)
            }
        }
    }
}
