import Foundation
import GRDB
import Hummingbird
import HummingbirdTesting
import Testing

@testable import MeterCore
@testable import SimulatorCore

/// A generated company imported into a fresh database, with the dashboard's routes over it.
struct DashboardFixture {
    let directory: String
    let rows: CompanyRows
    let database: MeterDatabase
    let engine: KPIEngine
    var store: SQLiteMeterStore { self.engine.store as! SQLiteMeterStore }
    let queries: DashboardQueries
    let routes: DashboardRoutes

    /// Offline: no write pipeline (as `meterctl --db`), so nothing but the import changes the data.
    static func offline(_ directory: String, customers: Int = 240, seed: UInt64 = 5, chartJS: String? = nil) throws -> DashboardFixture {
        try CompanyGenerator(customers: customers, seed: seed, year: 2023, months: 12).write(to: directory + "/csv")
        let database = try MeterDatabase(path: directory + "/meterd.sqlite")
        let report = try CompanyImporter.importDirectory(directory + "/csv", database: database)
        #expect(report.succeeded, "\(report.text)")
        let store = SQLiteMeterStore(database: database)
        let engine = KPIEngine(store: store, settings: offlineEngine(database).settings)
        let queries = DashboardQueries(
            store: store, kpi: engine,
            operatorQueries: makeOfflineOperatorQueries(
                store: store, engine: engine, writer: try .direct(store),
                directory: directory))
        let routes = DashboardRoutes(
            queries: queries, reporter: nil,
            assets: DashboardAssets(chartJSPath: chartJS ?? directory + "/no-chart.js"), logger: testLogger)
        return DashboardFixture(
            directory: directory, rows: try CompanyRows(directory: directory + "/csv"), database: database,
            engine: engine, queries: queries, routes: routes)
    }

    func application() -> some ApplicationProtocol {
        let router = Router(context: MeterRequestContext.self)
        self.routes.register(on: router)
        return Application(router: router)
    }
}

/// Status and parsed JSON body of one request through the router.
func getJSON(_ client: some TestClientProtocol, _ uri: String) async throws -> (status: Int, json: [String: Any]) {
    try await client.execute(uri: uri, method: .get) { response in
        let body = String(buffer: response.body)
        let object = (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any]
        if object == nil { Issue.record("\(uri): not a JSON object: \(body.prefix(200))") }
        #expect(response.headers[.contentType]?.hasPrefix("application/json") == true, "\(uri)")
        return (response.status.code, object ?? [:])
    }
}

/// Status and body of one request through the router, decoded as the answer type it should be.
func getAnswer<Answer: Decodable>(
    _ client: some TestClientProtocol, _ uri: String, as type: Answer.Type
) async throws -> (status: Int, answer: Answer) {
    try await client.execute(uri: uri, method: .get) { response in
        #expect(response.headers[.contentType]?.hasPrefix("application/json") == true, "\(uri)")
        return (response.status.code, try JSONDecoder().decode(type, from: Data(String(buffer: response.body).utf8)))
    }
}

/// A 4xx answer: JSON with the code and a message that says what was wrong.
func expectError(
    _ client: some TestClientProtocol, _ uri: String, status: Int, mentioning text: String,
    sourceLocation: SourceLocation = #_sourceLocation
) async throws {
    let (code, json) = try await getJSON(client, uri)
    #expect(code == status, "\(uri): \(json)", sourceLocation: sourceLocation)
    #expect(json["error"] as? String == (status == 404 ? "not_found" : "bad_request"), "\(uri)", sourceLocation: sourceLocation)
    #expect((json["message"] as? String)?.contains(text) == true, "\(uri): \(json)", sourceLocation: sourceLocation)
}

@Suite struct DashboardAPITests {
    /// The KPI document without the one key that differs between two calls.
    func withoutTime(_ document: KPIDocument) -> KPIDocument {
        var copy = document
        copy.generatedAt = ""
        return copy
    }

    @Test(.timeLimit(.minutes(1)))
    func kpiAnswersTheEngineDocumentForThePeriodAndRegionAsked() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try DashboardFixture.offline(directory)
            try await fixture.application().test(.router) { client in
                for (query, from, to, region) in [
                    ("from=2023-01&to=2023-12", "2023-01", "2023-12", nil),
                    ("from=2023-03&to=2023-05&region=North", "2023-03", "2023-05", "North"),
                    ("from=2023-02&to=2023-02&region=South", "2023-02", "2023-02", "South"),
                    ("to=2023-06&region=", "2022-07", "2023-06", nil),
                ] as [(String, String, String, String?)] {
                    let (status, json) = try await getJSON(client, "/api/kpi?" + query)
                    #expect(status == 200)
                    let period = try KPIPeriod(from: Month(from)!, to: Month(to)!)
                    let expected = try await kpiAnswer(fixture.engine, period, region: region)
                    let answer = try await getAnswer(client, "/api/kpi?" + query, as: KPIDocument.self).answer
                    #expect(self.withoutTime(answer) == self.withoutTime(expected), "\(query)")
                    #expect(Set(json.keys) == kpiKeys)
                }
                // Without bounds: the 12 months ending with the current one.
                let current = MonthCalendar(timeZone: TimeZone(identifier: "UTC")!).month(of: Date())
                let current12 = try await getAnswer(client, "/api/kpi", as: KPIDocument.self).answer
                #expect(current12.period == KPIDocument.Period(from: current.adding(months: -11).description, to: current.description))
                // A region nobody lives in has zero customers, not an error; a hostile one is just a name.
                for region in ["Atlantis", "North'%20OR%20'1'='1", "North%22;DROP%20TABLE%20customer;--"] {
                    let (status, document) = try await getAnswer(client, "/api/kpi?from=2023-01&to=2023-12&region=" + region, as: KPIDocument.self)
                    #expect(status == 200)
                    #expect(document.totalCustomers == 0, "\(region)")
                    #expect(document.totalConsumptionKwh == 0, "\(region)")
                }
                #expect(try await getAnswer(client, "/api/kpi?from=2023-01&to=2023-12", as: KPIDocument.self).answer.totalCustomers == 240)
                // Years below 1000 come back as YYYY, so the period can be asked for again.
                let early = try await getAnswer(client, "/api/kpi?from=0999-12&to=1000-01", as: KPIDocument.self)
                #expect(early.status == 200)
                #expect(early.answer.period == KPIDocument.Period(from: "0999-12", to: "1000-01"))
                #expect(Day(year: 1, month: 2, day: 3).description == "0001-02-03")

                try await expectError(client, "/api/kpi?from=2023-13&to=2023-12", status: 400, mentioning: "from: expected YYYY-MM")
                try await expectError(client, "/api/kpi?from=2023-01&to=23-12", status: 400, mentioning: "to: expected YYYY-MM")
                try await expectError(client, "/api/kpi?from=2023-06&to=2023-01", status: 400, mentioning: "after")
                try await expectError(client, "/api/kpi?from=1%27%20OR%201=1", status: 400, mentioning: "expected YYYY-MM")
                try await expectError(client, "/api/kpi?from=0900-01&to=2023-01", status: 400, mentioning: "longer than")
                try await expectError(client, "/api/kpi?region=" + String(repeating: "x", count: 201), status: 400, mentioning: "region")
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func regionsListEveryRegionWithItsCustomersAndMeters() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try DashboardFixture.offline(directory)
            try await fixture.application().test(.router) { client in
                let (status, json) = try await getJSON(client, "/api/regions")
                #expect(status == 200)
                let regions = list(json["regions"])
                let expected = Dictionary(grouping: fixture.rows.customers, by: \.region).mapValues(\.count)
                #expect(regions.map { $0["region"] as? String } == expected.keys.sorted())
                for entry in regions {
                    let name = entry["region"] as! String
                    #expect(number(entry["customers"]) == Double(expected[name]!))
                    #expect(number(entry["meters"]) == Double(expected[name]!))
                }
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aRegionsCustomersAreSortedPagedAndAddUpToItsRows() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try DashboardFixture.offline(directory)
            let rows = fixture.rows
            let north = Set(rows.customers.filter { $0.region == "North" }.map(\.id))
            let monthly = rows.monthly.filter { north.contains($0.customer) && $0.month >= 202302 && $0.month <= 202307 }
            var kwhSums: [Int: Double] = [:], revenueSums: [Int: Double] = [:], poorCounts: [Int: Int] = [:]
            for row in monthly {
                kwhSums[row.customer, default: 0] += row.kwh
                revenueSums[row.customer, default: 0] += row.revenue
                if row.status == "Poor" { poorCounts[row.customer, default: 0] += 1 }
            }
            let kwh = kwhSums, revenue = revenueSums, poor = poorCounts
            let byKwh = north.sorted { (kwh[$0] ?? 0) != (kwh[$1] ?? 0) ? (kwh[$0] ?? 0) > (kwh[$1] ?? 0) : $0 < $1 }
            let installed = Dictionary(uniqueKeysWithValues: rows.customers.map { ($0.id, $0.installed) })

            try await fixture.application().test(.router) { client in
                let base = "/api/regions/North?from=2023-02&to=2023-07"
                // Default: by kWh, largest first, 25 a page.
                let (status, first) = try await getJSON(client, base)
                #expect(status == 200)
                #expect(number(first["total"]) == Double(north.count))
                #expect(number(first["pages"]) == Double((north.count + 24) / 25))
                #expect(first["sort"] as? String == "kwh" && first["order"] as? String == "desc")
                let page1 = list(first["customers"])
                #expect(page1.map { Int(number($0["customer_id"])!) } == Array(byKwh.prefix(25)))
                for entry in page1 {
                    let id = Int(number(entry["customer_id"])!)
                    #expect(close(number(entry["kwh"]), kwh[id] ?? 0))
                    #expect(close(number(entry["revenue"]), revenue[id] ?? 0))
                    #expect(number(entry["poor_months"]) == Double(poor[id] ?? 0))
                    #expect(number(entry["records"]) == 6)
                    #expect(entry["installed_on"] as? String == installed[id])
                    #expect(entry["meters"] as? [String] == [defaultMeterName(customer: Int64(id))])
                    let last = rows.monthly.first { $0.customer == id && $0.month == 202307 }!.status.lowercased()
                    #expect(entry["last_status"] as? String == last)
                }
                let page2 = list(try await getJSON(client, base + "&page=2").json["customers"])
                #expect(page2.map { Int(number($0["customer_id"])!) } == Array(byKwh.dropFirst(25).prefix(25)))

                // Other orders.
                let ascending = list(try await getJSON(client, base + "&sort=customer_id&per_page=500").json["customers"])
                #expect(ascending.map { Int(number($0["customer_id"])!) } == north.sorted())
                let byRevenue = list(try await getJSON(client, base + "&sort=revenue&order=asc&per_page=10").json["customers"])
                let expectedRevenue = north.sorted { (revenue[$0] ?? 0) != (revenue[$1] ?? 0) ? (revenue[$0] ?? 0) < (revenue[$1] ?? 0) : $0 < $1 }
                #expect(byRevenue.map { Int(number($0["customer_id"])!) } == Array(expectedRevenue.prefix(10)))
                let byInstalled = list(try await getJSON(client, base + "&sort=installed&order=asc&per_page=500").json["customers"])
                let months = byInstalled.map { monthKey($0["installed_on"] as! String) }
                #expect(months == months.sorted())
                for key in CustomerSortKey.allCases {
                    #expect(try await getJSON(client, base + "&sort=\(key.rawValue)").status == 200)
                }
                // Past the last page: an empty page, not an error.
                let beyond = try await getJSON(client, base + "&page=99")
                #expect(beyond.status == 200 && list(beyond.json["customers"]).isEmpty)

                try await expectError(client, base + "&sort=name", status: 400, mentioning: "sort: expected one of")
                try await expectError(client, base + "&order=up", status: 400, mentioning: "order")
                try await expectError(client, base + "&page=0", status: 400, mentioning: "page")
                try await expectError(client, base + "&page=x", status: 400, mentioning: "page")
                try await expectError(client, base + "&per_page=501", status: 400, mentioning: "per_page")
                try await expectError(client, "/api/regions/North?from=2023-99", status: 400, mentioning: "from")
                try await expectError(client, "/api/regions/Atlantis", status: 404, mentioning: "Atlantis")
                try await expectError(client, "/api/regions/North'%20OR%20'1'='1", status: 404, mentioning: "No region")
                try await expectError(client, "/api/regions/%E0%A4%A", status: 400, mentioning: "region")
            }
        }
    }

    /// A region's customer table counts customer-months, as the KPIs do: a customer with two meters
    /// has one record a month, not two, and its poor months and last status are those of its
    /// monthly history (its meters' readings pooled), not of each meter.
    @Test(.timeLimit(.minutes(1)))
    func aRegionsCustomerWithTwoMetersHasOneRecordAMonth() async throws {
        try await withTemporaryDirectory { directory in
            // Given customer 5 (West) with meters M5a and M5b and customer 6 (West) with M6
            let (store, writer) = try twoMeterCustomerStore(in: directory)

            // When in October M5a reports once good and M5b twice poor (a poor customer-month), and
            // in November M5a twice good and M5b once poor (a good one), M6 once fair
            let october = try #require(RFC3339.parseMilliseconds("2026-10-02T00:00:00Z"))
            let november = try #require(RFC3339.parseMilliseconds("2026-11-02T00:00:00Z"))
            let quarter: Int64 = 900_000
            let readings = [
                Reading(meter: "M5a", seq: 1, timestampMs: october, kwh: 10, status: .good),
                Reading(meter: "M5b", seq: 1, timestampMs: october, kwh: 10, status: .poor),
                Reading(meter: "M5b", seq: 2, timestampMs: october + quarter, kwh: 10, status: .poor),
                Reading(meter: "M5a", seq: 2, timestampMs: november, kwh: 5, status: .good),
                Reading(meter: "M5a", seq: 3, timestampMs: november + quarter, kwh: 5, status: .good),
                Reading(meter: "M5b", seq: 3, timestampMs: november, kwh: 5, status: .poor),
                Reading(meter: "M6", seq: 1, timestampMs: november, kwh: 4, status: .fair),
            ]
            _ = try writer.commit([
                IngestSubmission(
                    readings: readings.enumerated().map { SubmittedReading(reading: $1, line: $0 + 1, receivedMs: november + 1_000) },
                    receiver: nil)
            ])
            let engine = KPIEngine(store: store, settings: KPISettings())
            let queries = DashboardQueries(
                store: store, kpi: engine,
                operatorQueries: makeOfflineOperatorQueries(store: store, engine: engine, writer: try .direct(store), directory: directory))
            let routes = DashboardRoutes(
                queries: queries, reporter: nil, assets: DashboardAssets(chartJSPath: directory + "/no-chart.js"), logger: testLogger)
            let router = Router(context: MeterRequestContext.self)
            routes.register(on: router)

            // Then customer 5 has two months, one of them poor, and November's status is good
            try await Application(router: router).test(.router) { client in
                let (status, json) = try await getJSON(client, "/api/regions/West?from=2026-10&to=2026-11&sort=customer_id&order=asc")
                #expect(status == 200)
                let customers = list(json["customers"])
                #expect(customers.map { number($0["customer_id"]) } == [5, 6])
                #expect(number(json["meters"]) == 3)
                guard customers.count == 2 else { return }
                let five = customers[0], six = customers[1]
                #expect(close(number(five["kwh"]), 45))
                #expect(number(five["records"]) == 2, "customer-months, not meter-months")
                #expect(number(five["poor_months"]) == 1)
                #expect(five["last_status"] as? String == "good")
                #expect(number(six["records"]) == 1 && number(six["poor_months"]) == 0)
                #expect(six["last_status"] as? String == "fair")

                // The same statuses as the customer's monthly history
                let history = list(try await getJSON(client, "/api/customers/5").json["monthly"])
                #expect(history.map { $0["status"] as? String } == ["poor", "good"])
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aCustomerHasHistoryBillsMaintenanceFeedbackAndComplaints() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try DashboardFixture.offline(directory)
            let rows = fixture.rows
            // One with a maintenance request and a complaint, so every list has something.
            let withMaintenance = Set(rows.maintenance.map(\.customer))
            let id = rows.complaints.map(\.customer).first { withMaintenance.contains($0) } ?? rows.maintenance[0].customer
            try await fixture.application().test(.router) { client in
                let (status, json) = try await getJSON(client, "/api/customers/\(id)")
                #expect(status == 200)
                let customer = rows.customers.first { $0.id == id }!
                #expect(number(json["customer_id"]) == Double(id))
                #expect(json["region"] as? String == customer.region)
                #expect(json["installed_on"] as? String == customer.installed)
                #expect(list(json["meters"]).map { $0["meter"] as? String } == [defaultMeterName(customer: Int64(id))])

                let monthly = rows.monthly.filter { $0.customer == id }.sorted { $0.month < $1.month }
                let history = list(json["monthly"])
                #expect(history.map { $0["month"] as? String } == monthly.map { Month(key: $0.month).description })
                for (entry, row) in zip(history, monthly) {
                    #expect(close(number(entry["kwh"]), row.kwh) && close(number(entry["revenue"]), row.revenue))
                    #expect(entry["status"] as? String == row.status.lowercased())
                }
                let bills = rows.bills.filter { $0.customer == id }.sorted { $0.month < $1.month }
                #expect(list(json["bills"]).map { $0["month"] as? String } == bills.map { Month(key: $0.month).description })
                #expect(zip(list(json["bills"]), bills).allSatisfy { close(number($0["amount"]), $1.amount) && $0["status"] as? String == $1.status })
                let maintenance = rows.maintenance.filter { $0.customer == id }.sorted { $0.request < $1.request }
                let answered = list(json["maintenance"])
                #expect(answered.map { $0["request_date"] as? String } == maintenance.map(\.request))
                #expect(answered.map { $0["resolution_date"] as? String } == maintenance.map(\.resolution))
                #expect(answered.map { number($0["technician_id"]) } == maintenance.map { Double($0.technician) })
                #expect(answered.allSatisfy { ($0["technician"] as? String) == rows.technicians[Int(number($0["technician_id"])!)] })
                let feedback = rows.feedback.filter { $0.customer == id }.sorted { $0.date < $1.date }
                #expect(list(json["feedback"]).map { $0["date"] as? String } == feedback.map(\.date))
                #expect(list(json["feedback"]).map { number($0["score"]) } == feedback.map { Double($0.score) })
                let complaints = rows.complaints.filter { $0.customer == id }
                #expect(Set(list(json["complaints"]).map { Int(number($0["complaint_id"])!) }) == Set(complaints.map(\.id)))
                #expect(list(json["installations"]).count == rows.installations.filter { $0.customer == id }.count)

                try await expectError(client, "/api/customers/999999", status: 404, mentioning: "No customer 999999")
                try await expectError(client, "/api/customers/abc", status: 400, mentioning: "positive whole number")
                try await expectError(client, "/api/customers/0", status: 400, mentioning: "positive whole number")
                try await expectError(client, "/api/customers/-3", status: 400, mentioning: "positive whole number")
                try await expectError(client, "/api/customers/1%20OR%201=1", status: 400, mentioning: "1 OR 1=1")
                try await expectError(client, "/api/customers/99999999999999999999", status: 400, mentioning: "positive whole number")
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aMeterHasItsStateAndMonths() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try DashboardFixture.offline(directory)
            try await fixture.application().test(.router) { client in
                let (status, json) = try await getJSON(client, "/api/meters/MTR-000017")
                #expect(status == 200)
                let customer = fixture.rows.customers.first { $0.id == 17 }!
                #expect(json["meter"] as? String == "MTR-000017")
                #expect(number(json["customer_id"]) == 17)
                #expect(json["region"] as? String == customer.region)
                #expect(json["state"] as? String == "inactive")  // imported, never heard from
                #expect(number(json["readings_total"]) == 0)
                let months = list(json["monthly"])
                let rows = fixture.rows.monthly.filter { $0.customer == 17 }.sorted { $0.month < $1.month }
                #expect(months.map { $0["month"] as? String } == rows.map { Month(key: $0.month).description })
                #expect(zip(months, rows).allSatisfy { close(number($0["kwh"]), $1.kwh) && $0["status"] as? String == $1.status.lowercased() })
                #expect(months.allSatisfy { $0["latency_avg_ms"] is NSNull })

                try await expectError(client, "/api/meters/MTR-999999", status: 404, mentioning: "No meter MTR-999999")
                try await expectError(client, "/api/meters/MTR-999999/readings", status: 404, mentioning: "No meter")
                try await expectError(client, "/api/meters/bad%20meter", status: 400, mentioning: "meter id")
                try await expectError(client, "/api/meters/x'%20OR%201=1--", status: 400, mentioning: "meter id")
                try await expectError(client, "/api/meters/" + String(repeating: "M", count: 65), status: 400, mentioning: "meter id")
                try await expectError(client, "/api/meters/MTR-000017/readings?limit=0", status: 400, mentioning: "limit")
                try await expectError(client, "/api/meters/MTR-000017/readings?limit=1001", status: 400, mentioning: "limit")
                let empty = try await getJSON(client, "/api/meters/MTR-000017/readings")
                #expect(empty.status == 200 && list(empty.json["readings"]).isEmpty && empty.json["complete"] as? Bool == true)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func inactiveMetersAreTheFlaggedThenTheNeverHeardFrom() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try DashboardFixture.offline(directory)
            let regions = Dictionary(grouping: fixture.rows.customers, by: \.region).mapValues(\.count)
            try await fixture.application().test(.router) { client in
                // Imported meters that never reported are inactive, with no time they went silent.
                let (status, before) = try await getAnswer(client, "/api/inactive?limit=5", as: DashboardInactiveAnswer.self)
                #expect(status == 200)
                #expect(before.count == 240)
                #expect(before.meters.map(\.meter) == (1...5).map { defaultMeterName(customer: Int64($0)) })
                #expect(before.meters.allSatisfy { $0.silentSince == nil })

                // Once the liveness monitor has flagged them they carry the time.
                let startMs: Int64 = 1_700_000_000_000
                let monitor = LivenessMonitor(
                    store: fixture.store, writer: try .direct(fixture.store), inactiveAfterSeconds: 60, logger: testLogger, nowMs: startMs)
                #expect(try await monitor.check(nowMs: startMs + 61_000).wentInactive.count == 240)
                let after = try await getAnswer(client, "/api/inactive?region=West&limit=1000", as: DashboardInactiveAnswer.self).answer
                #expect(after.region == "West")
                #expect(after.count == regions["West"]!)
                #expect(after.meters.count == regions["West"]!)
                #expect(after.meters.allSatisfy { $0.region == "West" && $0.silentSince == RFC3339.format(millisecondsSinceEpoch: startMs) })
                #expect(try await getAnswer(client, "/api/inactive?region=Nowhere'%20OR%20''='", as: DashboardInactiveAnswer.self).answer.count == 0)
                try await expectError(client, "/api/inactive?limit=0", status: 400, mentioning: "limit")
                try await expectError(client, "/api/inactive?limit=lots", status: 400, mentioning: "limit")
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func unknownAPIPathsAndStatusWithoutAPipelineAnswerJSON() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try DashboardFixture.offline(directory, customers: 20)
            try await fixture.application().test(.router) { client in
                try await expectError(client, "/api/nothing/here", status: 404, mentioning: "/api/nothing/here")
                let (status, json) = try await getJSON(client, "/api/status")
                #expect(status == 503 && json["error"] as? String == "unavailable")
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func recentReadingsComeNewestFirstWithTheirLatency() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                // Given two meters interleaved on one connection, one with a fault and poor readings.
                let client = try await LineClient(port: harness.port)
                let base = WallClock.nowMs() - 60_000
                var lines: [String] = []
                for seq in 1...40 {
                    lines.append(
                        readingLine(
                            meter: "MTR-A", seq: Int64(seq), kwh: Double(seq) / 100, timestampMs: base + Int64(seq) * 1000,
                            status: seq % 10 == 0 ? .poor : .good, fault: seq == 35 ? "tamper" : nil))
                    lines.append(readingLine(meter: "MTR-B", seq: Int64(seq), timestampMs: base + Int64(seq) * 1000))
                }
                try await client.send(lines.joined(separator: "\n") + "\n")
                try await waitUntil {
                    try await harness.database.pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM reading") } == 80
                }
                await client.close()

                func routes() async throws -> DashboardRoutes {
                    let store = SQLiteMeterStore(database: harness.database)
                    let engine = KPIEngine(store: store, settings: KPISettings())
                    let queries = DashboardQueries(
                        store: store, kpi: engine,
                        operatorQueries: try await makeOperatorQueries(
                            store: store, writer: .pipeline(harness.pipeline),
                            directory: directory))
                    return DashboardRoutes(
                        queries: queries,
                        reporter: StatusReporter(
                            pipeline: harness.pipeline, store: store,
                            queries: queries.operatorQueries),
                        assets: DashboardAssets(), logger: testLogger)
                }
                let router = Router(context: MeterRequestContext.self)
                try await routes().register(on: router)
                try await Application(router: router).test(.router) { client in
                    let (status, json) = try await getJSON(client, "/api/meters/MTR-A/readings?limit=10")
                    #expect(status == 200)
                    let readings = list(json["readings"])
                    #expect(readings.map { number($0["seq"]) } == (31...40).reversed().map(Double.init))
                    #expect(json["complete"] as? Bool == true)
                    for reading in readings {
                        let ts = RFC3339.parseMilliseconds(reading["ts"] as! String)!
                        let received = RFC3339.parseMilliseconds(reading["received"] as! String)!
                        #expect(number(reading["latency_ms"]) == Double(received - ts))
                        #expect(number(reading["latency_ms"])! >= 20_000)
                    }
                    #expect(readings.first?["status"] as? String == "poor")
                    #expect(readings.first { number($0["seq"]) == 35 }?["fault"] as? String == "tamper")
                    #expect(close(number(readings.first?["kwh"]), 0.4))
                    let latencies = readings.map { number($0["latency_ms"])! }
                    #expect(close(number(object(json["latency_ms"])["avg"]), latencies.reduce(0, +) / Double(latencies.count)))
                    #expect(number(object(json["latency_ms"])["max"]) == latencies.max())

                    // All of them, and a meter's detail with its live month.
                    #expect(list(try await getJSON(client, "/api/meters/MTR-B/readings?limit=1000").json["readings"]).count == 40)
                    let meter = try await getJSON(client, "/api/meters/MTR-A").json
                    #expect(meter["state"] as? String == "active" && number(meter["readings_total"]) == 40 && number(meter["faults_total"]) == 1)
                    #expect(meter["customer_id"] is NSNull && meter["region"] as? String == Region.unassigned)
                    let month = list(meter["monthly"]).last!
                    #expect(number(month["readings"]) == 40 && number(month["poor"]) == 4 && month["status"] as? String == "good")
                    #expect(number(month["latency_avg_ms"])! >= 20_000)

                    let live = try await getJSON(client, "/api/status")
                    #expect(live.status == 200 && number(live.json["readings_total"]) == 80)
                }

                // Where a bounded scan used to stop short (issue 12, point 6), the meter's chain answers
                // with all of its readings, reading only their own rows.
                try await Application(router: router).test(.router) { client in
                    let json = try await getJSON(client, "/api/meters/MTR-A/readings?limit=50").json
                    #expect(list(json["readings"]).map { number($0["seq"]) } == (1...40).reversed().map(Double.init))
                    #expect(json["complete"] as? Bool == true)
                    #expect(number(json["scanned_rows"]) == 40)
                    #expect(json["scanned_since"] is NSNull)
                }
            }
        }
    }
}
