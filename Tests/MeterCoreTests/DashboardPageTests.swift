#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

@testable import MeterCore
@testable import SimulatorCore

/// The page and its assets; the browser tests (Tests/browser) check what it shows.
@Suite struct DashboardPageTests {
    @Test(.timeLimit(.minutes(1)))
    func thePageLoadsChartJSOnlyWhenTheFileIsThere() async throws {
        try await withTemporaryDirectory { directory in
            let chart = directory + "/chart.min.js"
            try "window.Chart = function () {};\n".write(toFile: chart, atomically: true, encoding: .utf8)
            let fixture = try DashboardFixture.offline(directory, customers: 10, chartJS: chart)
            try await fixture.application().test(.router) { client in
                try await client.execute(uri: "/", method: .get) { response in
                    let html = String(buffer: response.body)
                    #expect(response.status == .ok)
                    #expect(response.headers[.contentType] == "text/html; charset=utf-8")
                    #expect(html.contains(#"<link rel="icon" href="data:,">"#))
                    #expect(html.contains(#"<script src="/assets/chart.js"></script>"#))
                    #expect(html.contains(#"<script src="/assets/dashboard.js" defer></script>"#))
                    // Nothing from anywhere but meterd itself.
                    #expect(!html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"))
                }
                try await client.execute(uri: "/assets/chart.js", method: .get) { response in
                    #expect(response.status == .ok)
                    #expect(response.headers[.contentType] == "text/javascript; charset=utf-8")
                    #expect(String(buffer: response.body) == "window.Chart = function () {};\n")
                }
                try await client.execute(uri: "/assets/dashboard.js", method: .get) { response in
                    #expect(response.status == .ok && response.headers[.contentType] == "text/javascript; charset=utf-8")
                    #expect(String(buffer: response.body) == DashboardScript.source)
                }
                try await client.execute(uri: "/assets/dashboard.css", method: .get) { response in
                    #expect(response.status == .ok && response.headers[.contentType] == "text/css; charset=utf-8")
                }
                // The file goes away: tables only, and a JSON 404 that says how to get it back.
                try FileManager.default.removeItem(atPath: chart)
                try await client.execute(uri: "/", method: .get) { response in
                    #expect(!String(buffer: response.body).contains("/assets/chart.js"))
                }
                try await expectError(client, "/assets/chart.js", status: 404, mentioning: "libjs-chart.js")
            }
        }
    }

    @Test func everyFigureThePageShowsIsAKeyOfTheKPIDocument() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try DashboardFixture.offline(directory, customers: 30)
            let document = try await kpiDocument(fixture.engine, try KPIPeriod(from: Month("2023-01")!, to: Month("2023-12")!))
            let html = DashboardPage.html
            let paths = html.components(separatedBy: #"data-kpi=""#).dropFirst().map { String($0.prefix { $0 != "\"" }) }
            #expect(paths.count >= 20)
            for path in paths {
                var value: Any? = document
                for key in path.split(separator: ".") { value = (value as? [String: Any])?[String(key)] }
                #expect(value != nil, "data-kpi=\"\(path)\" is not in the KPI document")
            }
            // Every overview figure of SPEC.md section 5 is on the page.
            for key in [
                "total_customers", "total_consumption_kwh", "total_revenue", "average_consumption_kwh", "meters.active",
                "meters.inactive", "meters.faulty", "installation_time_days", "satisfaction.average", "complaints.received",
                "complaints.resolved", "new_vs_returning.new", "new_vs_returning.returning", "maintenance.received",
                "maintenance.processed", "maintenance.open", "reading_latency_ms.p95",
            ] {
                #expect(paths.contains(key), "\(key) missing from the page")
            }
            for table in [
                "consumption_by_region", "top_consumers", "monthly_consumption", "meter_health", "faulty_meters", "revenue_by_region",
                "revenue_trend", "payment_status", "satisfaction_distribution", "technicians", "inactive_meters",
            ] {
                #expect(html.contains(#"data-table="\#(table)""#), "\(table) table missing from the page")
            }
        }
    }

    /// Node, where the machine has it (the build machines here do); the browser tests find a syntax error too, later.
    static let node = ["/usr/local/bin/node", "/usr/bin/node", "/usr/bin/nodejs"].first { FileManager.default.isExecutableFile(atPath: $0) }

    @Test(.enabled(if: Self.node != nil, "node is not installed"))
    func theScriptIsValidJavaScript() async throws {
        let node = try #require(Self.node)
        try await withTemporaryDirectory { directory in
            let file = directory + "/dashboard.js"
            try DashboardScript.source.write(toFile: file, atomically: true, encoding: .utf8)
            let result = try runProgram([node, "--check", file])
            #expect(result.status == 0, "node --check: \(result.stdout + result.stderr)")
        }
    }

    @Test func theChartJSPathIsASetting() throws {
        var configuration = DaemonConfiguration()
        #expect(configuration.dashboardChartJS == "/usr/share/javascript/chart.js/chart.min.js")
        try configuration.set("dashboard_chartjs", to: "/opt/chart.js")
        #expect(configuration.dashboardChartJS == "/opt/chart.js")
        #expect(throws: ConfigurationError.self) { try configuration.set("dashboard_chartjs", to: "") }
        #expect(DaemonConfiguration.keys.contains { $0.key == "dashboard_chartjs" })
    }

    @Test(.timeLimit(.minutes(1)))
    func theRealDaemonServesTheDashboardAndAnswersBadInputWithJSON() async throws {
        try await withTemporaryDirectory { directory in
            let chart = directory + "/my-chart.js"
            try "/* chart */\n".write(toFile: chart, atomically: true, encoding: .utf8)
            try CompanyGenerator(customers: 20, seed: 3).write(to: directory + "/csv")
            try FileManager.default.createDirectory(atPath: directory + "/data", withIntermediateDirectories: true)
            _ = try CompanyImporter.importDirectory(directory + "/csv", database: try MeterDatabase(path: directory + "/data/meterd.sqlite"))
            let meterd = try MeterdUnderTest.start(dataDirectory: directory + "/data", arguments: ["--dashboard-chartjs", chart])
            defer { meterd.process.stop() }
            let port = try await meterd.ports().http

            let page = try await httpGet(port: port, path: "/")
            #expect(page.status == 200 && page.body.contains("<title>meterd dashboard</title>"))
            #expect(try await httpGet(port: port, path: "/assets/chart.js").body == "/* chart */\n")
            let kpi = try await httpGet(port: port, path: "/api/kpi?from=2023-01&to=2023-12&region=North")
            #expect(kpi.status == 200 && kpi.body.contains(#""region":"North""#))
            // Bad input through the real server: JSON with a message, never a bare 500.
            for (path, status, text) in [
                ("/api/kpi?from=2023-13", 400, "from: expected YYYY-MM"), ("/api/customers/4242", 404, "No customer 4242"),
                ("/api/customers/x", 400, "positive whole number"), ("/api/regions/Nowhere", 404, "No region"),
                ("/api/meters/MTR-000001/readings?limit=-1", 400, "limit"), ("/api/unknown", 404, "No API endpoint"),
            ] {
                let answer = try await httpGet(port: port, path: path)
                #expect(answer.status == status, "\(path): \(answer.body)")
                let json = try JSONSerialization.jsonObject(with: Data(answer.body.utf8)) as? [String: Any]
                #expect((json?["message"] as? String)?.contains(text) == true, "\(path): \(answer.body)")
            }
            #expect(try await meterd.terminate() == 0)
        }
    }
}
