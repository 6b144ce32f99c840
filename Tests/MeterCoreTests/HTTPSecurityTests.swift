#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOSSL
import Testing

@testable import MeterCore
@testable import SimulatorCore

/// One HTTP/1.1 exchange over a fresh connection (TLS when `tls` is given): status, headers and body.
struct HTTPExchange {
    var status: Int
    var headers: [(name: String, value: String)]
    var body: String

    func header(_ name: String) -> String? { self.headers.first { $0.name.lowercased() == name.lowercased() }?.value }
    func headers(_ name: String) -> [String] { self.headers.filter { $0.name.lowercased() == name.lowercased() }.map(\.value) }

    /// The session cookie's value from `Set-Cookie`, if one was set.
    var sessionCookie: String? {
        self.headers("Set-Cookie").first { $0.hasPrefix(HTTPAccess.cookieName + "=") }
            .map { String($0.dropFirst(HTTPAccess.cookieName.count + 1).prefix { $0 != ";" }) }
    }

    var json: [String: Any] { ((try? JSONSerialization.jsonObject(with: Data(self.body.utf8))) as? [String: Any]) ?? [:] }
}

func httpRequest(
    port: Int, _ path: String, method: String = "GET", headers: [String: String] = [:], body: String? = nil,
    tls: NIOSSLContext? = nil
) async throws -> HTTPExchange {
    let client = try await LineClient(port: port, tls: tls)
    defer { Task { await client.close() } }
    var request = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    for (name, value) in headers { request += "\(name): \(value)\r\n" }
    if let body {
        request += "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: \(body.utf8.count)\r\n"
    }
    request += "\r\n" + (body ?? "")
    try await client.send(request)
    var lines: [String] = []
    while let line = try await client.readLine() { lines.append(line) }
    guard let statusLine = lines.first else { return HTTPExchange(status: 0, headers: [], body: "") }
    let status = Int(statusLine.split(separator: " ").dropFirst().first ?? "") ?? 0
    var headerLines: [(String, String)] = []
    var index = 1
    while index < lines.count, !lines[index].trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
        let line = lines[index].trimmingCharacters(in: .newlines.union(CharacterSet(charactersIn: "\r")))
        if let colon = line.firstIndex(of: ":") {
            headerLines.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        index += 1
    }
    let body = lines.dropFirst(index + 1).map { $0 + "\n" }.joined()
    return HTTPExchange(status: status, headers: headerLines, body: body)
}

/// A generated company imported into a data directory, users made with `meterctl user add`, and
/// the real meterd over them with `http_users` and a metrics token.
struct SecuredMeterd {
    static let password = "correct horse battery"
    let directory: String
    let rows: CompanyRows
    let meterd: MeterdUnderTest
    let http: Int
    /// The region of customer 1, which the viewer `ana` is scoped to.
    let region: String
    let metricsToken: String
    var usersFile: String { self.directory + "/users" }

    /// A customer of the other regions, for the 403 checks.
    var foreignCustomer: Int { self.rows.customers.first { $0.region != self.region }!.id }
    var ownCustomers: [Int] { self.rows.customers.filter { $0.region == self.region }.map(\.id) }

    static func start(in directory: String, arguments: [String] = []) async throws -> SecuredMeterd {
        try CompanyGenerator(customers: 60, seed: 11, year: 2025, months: 6).write(to: directory + "/csv")
        let rows = try CompanyRows(directory: directory + "/csv")
        let data = directory + "/data"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        let meterctl = try BuiltProduct.path("meterctl")
        let imported = try await offPool { try runProgram([meterctl, "import", directory + "/csv", "--db", data + "/meterd.sqlite"]) }
        try #require(imported.status == 0, "\(imported.stderr)")
        let region = rows.customers.first { $0.id == 1 }!.region
        for (user, extra) in [("ana", ["--scope", region]), ("root", ["--role", "admin"]), ("eve", [])] {
            try await Self.addUser(user, extra, file: directory + "/users")
        }
        let token = "metrics-token-0123456789abcdef"
        try (token + "\n").write(toFile: directory + "/metrics.token", atomically: true, encoding: .utf8)
        let meterd = try MeterdUnderTest.start(
            dataDirectory: data,
            arguments: ["--http-users", directory + "/users", "--metrics-token-file", directory + "/metrics.token"] + arguments)
        let ports = try await meterd.ports()
        return SecuredMeterd(
            directory: directory, rows: rows, meterd: meterd, http: ports.http, region: region, metricsToken: token)
    }

    /// `meterctl user add` with the password on stdin (cost 4: these tests log in often).
    static func addUser(_ name: String, _ arguments: [String], file: String, password: String = Self.password) async throws {
        let meterctl = try BuiltProduct.path("meterctl")
        let command = [meterctl, "user", "add", name, "--file", file, "--cost", "4"] + arguments
        let result = try await offPool { try runProgram(command, input: password + "\n") }
        try #require(result.status == 0, "meterctl user add \(name): \(result.stderr)")
    }

    func login(_ user: String, password: String = Self.password) async throws -> HTTPExchange {
        try await httpRequest(port: self.http, "/login", method: "POST", body: Self.loginForm(user, password: password))
    }

    /// The form `/login` takes, encoded.
    static func loginForm(_ user: String, password: String = Self.password) -> String {
        "username=\(user)&password=" + password.replacingOccurrences(of: " ", with: "+")
    }

    /// Logs in and returns the session cookie.
    func session(_ user: String) async throws -> String {
        let answer = try await self.login(user)
        #expect(answer.status == 303, "login as \(user): \(answer.status) \(answer.body)")
        return try #require(answer.sessionCookie, "no session cookie for \(user): \(answer.headers)")
    }

    func get(_ path: String, session: String?) async throws -> HTTPExchange {
        try await httpRequest(port: self.http, path, headers: session.map { ["Cookie": "\(HTTPAccess.cookieName)=\($0)"] } ?? [:])
    }

    func stop() async throws {
        #expect(try await self.meterd.terminate() == 0, "\(self.meterd.process.output)")
    }
}

@Suite(.serialized) struct HTTPSecurityTests {
    @Test(.timeLimit(.minutes(2)))
    func loginSetsAStrictHttpOnlyCookieAndLogoutEndsTheSession() async throws {
        try await withTemporaryDirectory { directory in
            let daemon = try await SecuredMeterd.start(in: directory)
            defer { daemon.meterd.process.stop() }

            // Without a session: the page sends to the login form, the API answers 401, probes stay open.
            let page = try await daemon.get("/", session: nil)
            #expect(page.status == 303 && page.header("Location") == "/login")
            let api = try await daemon.get("/api/kpi", session: nil)
            #expect(api.status == 401 && api.json["error"] as? String == "unauthorized")
            for probe in ["/healthz", "/readyz"] {
                #expect(try await daemon.get(probe, session: nil).status == 200, "\(probe)")
            }
            let form = try await daemon.get("/login", session: nil)
            #expect(form.status == 200 && form.body.contains(#"<form method="post" action="/login""#))

            // A wrong password: the form again, 401, no cookie, and a line in the log.
            let wrong = try await daemon.login("ana", password: "not the password")
            #expect(wrong.status == 401 && wrong.body.contains("Wrong user name or password.") && wrong.sessionCookie == nil)
            let unknown = try await daemon.login("nobody")
            #expect(unknown.status == 401 && unknown.body.contains("Wrong user name or password."))
            try await waitUntil { daemon.meterd.process.output.contains("HTTP login failed") }
            #expect(daemon.meterd.process.output.contains("http.user=ana"))

            // The right one: 303 to the dashboard with an HttpOnly, SameSite=Strict cookie (not Secure over plain HTTP).
            let login = try await daemon.login("ana")
            #expect(login.status == 303 && login.header("Location") == "/")
            let cookie = try #require(login.headers("Set-Cookie").first)
            for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
                #expect(cookie.contains(attribute), "\(cookie)")
            }
            #expect(!cookie.contains("Secure"), "\(cookie)")
            let token = try #require(login.sessionCookie)
            #expect(token.count == 64)
            let me = try await daemon.get("/api/session", session: token)
            #expect(me.status == 200)
            #expect(me.json["user"] as? String == "ana" && me.json["role"] as? String == "viewer" && me.json["scope"] as? String == daemon.region)
            let dashboard = try await daemon.get("/", session: token)
            #expect(dashboard.status == 200 && dashboard.body.contains("/assets/dashboard.js"))
            #expect(try await daemon.get("/assets/dashboard.js", session: token).status == 200)
            #expect(try await daemon.get("/assets/dashboard.js", session: nil).status == 303)
            let forged = (token.first == "0" ? "1" : "0") + token.dropFirst()  // one hex digit changed
            #expect(try await daemon.get("/api/session", session: forged).status == 401)

            // A shared link to a dashboard view opens that view after the login; nothing else is a destination.
            let view = "/?from=2025-01&to=2025-06&region=\(daemon.region.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)"
            let shared = try await daemon.get(view, session: nil)
            let location = try #require(shared.header("Location"))
            #expect(shared.status == 303 && location.hasPrefix("/login?next="), "\(location)")
            let sharedForm = try await daemon.get(location, session: nil)
            #expect(sharedForm.status == 200)
            let escapedView = view.replacingOccurrences(of: "&", with: "&amp;")
            #expect(sharedForm.body.contains(#"<input type="hidden" name="next" value="\#(escapedView)">"#), "\(sharedForm.body)")
            func loginLeads(to next: String) async throws -> String? {
                let encoded = next.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
                let answer = try await httpRequest(
                    port: daemon.http, "/login", method: "POST", body: SecuredMeterd.loginForm("ana") + "&next=" + encoded)
                #expect(answer.status == 303)
                return answer.header("Location")
            }
            #expect(try await loginLeads(to: view) == view)
            for elsewhere in ["//evil.example/", "https://evil.example/", "/api/kpi", "/\\evil.example", "/?a=1\r\nSet-Cookie: x=1"] {
                #expect(try await loginLeads(to: elsewhere) == "/", "\(elsewhere)")
            }

            // Logout ends the session on the server, not only in the browser.
            let logout = try await httpRequest(
                port: daemon.http, "/logout", method: "POST", headers: ["Cookie": "\(HTTPAccess.cookieName)=\(token)"], body: "")
            #expect(logout.status == 303 && logout.header("Location") == "/login")
            #expect(logout.headers("Set-Cookie").contains { $0.hasPrefix(HTTPAccess.cookieName + "=;") && $0.contains("Max-Age=0") })
            #expect(try await daemon.get("/api/session", session: token).status == 401)
            try await daemon.stop()
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func sessionsExpireAfterTheirTTL() async throws {
        try await withTemporaryDirectory { directory in
            let daemon = try await SecuredMeterd.start(in: directory, arguments: ["--http-session-ttl", "2"])
            defer { daemon.meterd.process.stop() }
            let loggedIn = ContinuousClock.now
            let token = try await daemon.session("root")
            #expect(try await daemon.get("/api/kpi", session: token).status == 200)
            try await waitUntil(timeout: .seconds(10)) { try await daemon.get("/api/regions", session: token).status == 401 }
            #expect(ContinuousClock.now - loggedIn >= .seconds(2))
            #expect(try await daemon.get("/", session: token).header("Location") == "/login")
            try await daemon.stop()
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func wrongPasswordsAreRateLimitedPerUserAndLogged() async throws {
        try await withTemporaryDirectory { directory in
            let daemon = try await SecuredMeterd.start(in: directory)
            defer { daemon.meterd.process.stop() }
            for attempt in 1...5 {
                #expect(try await daemon.login("eve", password: "guess \(attempt)").status == 401, "attempt \(attempt)")
            }
            // The sixth try is refused before the password is checked, even the right one.
            let refused = try await daemon.login("eve")
            #expect(refused.status == 429, "\(refused.body)")
            let wait = try #require(refused.header("Retry-After").flatMap { Int($0) })
            #expect((1...60).contains(wait))
            #expect(refused.body.contains("Too many wrong passwords"))
            #expect(refused.sessionCookie == nil)
            try await waitUntil { daemon.meterd.process.output.contains("HTTP login refused: too many wrong passwords") }
            #expect(daemon.meterd.process.output.components(separatedBy: "HTTP login failed").count - 1 == 5)
            // Another user from the same address is not locked out by eve's failures.
            #expect(try await daemon.login("root").status == 303)
            try await daemon.stop()
        }
    }

    /// The password check takes a few hundred milliseconds: attempts sent at once must not all
    /// pass the limit while the first ones are still being checked.
    @Test(.timeLimit(.minutes(2)))
    func aBurstOfConcurrentGuessesChecksNoMoreThanTheLimit() async throws {
        try await withTemporaryDirectory { directory in
            let daemon = try await SecuredMeterd.start(in: directory)
            defer { daemon.meterd.process.stop() }
            let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                for attempt in 1...30 {
                    group.addTask { try await daemon.login("eve", password: "guess \(attempt)").status }
                }
                group.addTask { try await daemon.login("eve").status }
                return try await group.reduce(into: [Int: Int]()) { $0[$1, default: 0] += 1 }
            }
            // Five attempts are checked (at most one of them the right password); the rest are refused unchecked.
            #expect(statuses[429] == 26, "\(statuses)")
            #expect((statuses[401] ?? 0) + (statuses[303] ?? 0) == 5, "\(statuses)")
            try await waitUntil {
                daemon.meterd.process.output.components(separatedBy: "HTTP login failed").count - 1 == statuses[401] ?? 0
            }
            // Another user at the same address still gets in: 5 of the address's 20 are used.
            #expect(try await daemon.login("root").status == 303)
            try await daemon.stop()
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func aRegionScopedUserSeesOnlyTheirRegionOnEveryRoute() async throws {
        try await withTemporaryDirectory { directory in
            let daemon = try await SecuredMeterd.start(in: directory)
            defer { daemon.meterd.process.stop() }
            let ana = try await daemon.session("ana")
            let root = try await daemon.session("root")
            let region = daemon.region
            let other = try #require(daemon.rows.customers.first { $0.region != region }?.region)
            let own = try #require(daemon.ownCustomers.first)
            let foreign = daemon.foreignCustomer
            let period = "from=2025-01&to=2025-06"

            // KPI document: without a region the user's region; its figures are that region's alone.
            let kpi = try await daemon.get("/api/kpi?\(period)", session: ana)
            #expect(kpi.status == 200)
            #expect(kpi.json["region"] as? String == region)
            #expect(number(kpi.json["total_customers"]) == Double(daemon.ownCustomers.count))
            let expectedKwh = daemon.rows.monthly.filter { daemon.ownCustomers.contains($0.customer) }.reduce(0.0) { $0 + $1.kwh }
            let kwh = try #require(number(kpi.json["total_consumption_kwh"]))
            #expect(abs(kwh - expectedKwh) < 1e-6 * max(1, expectedKwh), "\(kwh) vs \(expectedKwh)")
            for key in ["consumption_by_region", "revenue_by_region", "top_consumers"] {
                let entries = try #require(kpi.json[key] as? [[String: Any]], "\(key)")
                #expect(!entries.isEmpty && entries.allSatisfy { $0["region"] as? String == region }, "\(key): \(entries)")
            }
            // The same document an admin gets when asking for that region.
            let asked = try await daemon.get("/api/kpi?\(period)&region=\(region)", session: ana)
            let admin = try await daemon.get("/api/kpi?\(period)&region=\(region)", session: root)
            func withoutTime(_ text: String) -> String {
                text.replacingOccurrences(of: #""generated_at":"[^"]*""#, with: "", options: .regularExpression)
            }
            #expect(asked.status == 200 && withoutTime(asked.body) == withoutTime(admin.body))
            let forbidden = try await daemon.get("/api/kpi?\(period)&region=\(other)", session: ana)
            #expect(forbidden.status == 403 && forbidden.json["error"] as? String == "forbidden")
            #expect((forbidden.json["message"] as? String)?.contains("sees region \(region) only") == true)

            // Regions: only theirs listed; another's customers page is 403.
            let regions = try await daemon.get("/api/regions", session: ana)
            #expect((regions.json["regions"] as? [[String: Any]])?.compactMap { $0["region"] as? String } == [region])
            #expect(try await daemon.get("/api/regions/\(region)?\(period)", session: ana).status == 200)
            #expect(try await daemon.get("/api/regions/\(other)?\(period)", session: ana).status == 403)

            // Drill-downs: a customer and a meter of theirs, 403 for another region's, 404 for none.
            #expect(try await daemon.get("/api/customers/\(own)", session: ana).json["region"] as? String == region)
            #expect(try await daemon.get("/api/customers/\(foreign)", session: ana).status == 403)
            #expect(try await daemon.get("/api/customers/999999", session: ana).status == 404)
            let ownMeter = String(format: "MTR-%06d", own)
            let foreignMeter = String(format: "MTR-%06d", foreign)
            #expect(try await daemon.get("/api/meters/\(ownMeter)", session: ana).json["region"] as? String == region)
            #expect(try await daemon.get("/api/meters/\(ownMeter)/readings", session: ana).status == 200)
            #expect(try await daemon.get("/api/meters/\(foreignMeter)", session: ana).status == 403)
            #expect(try await daemon.get("/api/meters/\(foreignMeter)/readings", session: ana).status == 403)
            #expect(try await daemon.get("/api/meters/MTR-999999", session: ana).status == 404)

            // Inactive meters: theirs only; the fleet-wide live figures not at all.
            let inactive = try await daemon.get("/api/inactive?limit=1000", session: ana)
            #expect(inactive.status == 200 && inactive.json["region"] as? String == region)
            let meters = try #require(inactive.json["meters"] as? [[String: Any]])
            #expect(meters.count == daemon.ownCustomers.count && meters.allSatisfy { $0["region"] as? String == region })
            #expect(try await daemon.get("/api/inactive?region=\(other)", session: ana).status == 403)
            #expect(try await daemon.get("/api/status", session: ana).status == 403)

            // An admin sees everything.
            #expect(list(try await daemon.get("/api/regions", session: root).json["regions"]).count == CompanyGenerator.regions.count)
            #expect(try await daemon.get("/api/customers/\(foreign)", session: root).status == 200)
            #expect(try await daemon.get("/api/meters/\(foreignMeter)", session: root).status == 200)
            #expect(try await daemon.get("/api/status", session: root).status == 200)
            #expect(try await daemon.get("/api/kpi", session: root).json["region"] is NSNull)
            try await daemon.stop()
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func aRemovedUsersSessionEndsAndAChangedScopeAppliesAtOnce() async throws {
        try await withTemporaryDirectory { directory in
            let daemon = try await SecuredMeterd.start(in: directory)
            defer { daemon.meterd.process.stop() }
            let eve = try await daemon.session("eve")
            let ana = try await daemon.session("ana")
            #expect(try await daemon.get("/api/status", session: eve).status == 200)
            // eve becomes a viewer of ana's region: the same session is scoped from its next request.
            try await SecuredMeterd.addUser("eve", ["--scope", daemon.region], file: daemon.usersFile)
            #expect(try await daemon.get("/api/status", session: eve).status == 403)
            #expect(try await daemon.get("/api/kpi", session: eve).json["region"] as? String == daemon.region)
            let meterctl = try BuiltProduct.path("meterctl")
            let removed = try await offPool { try runProgram([meterctl, "user", "remove", "ana", "--file", daemon.usersFile]) }
            #expect(removed.status == 0, "\(removed.stderr)")
            #expect(try await daemon.get("/api/kpi", session: ana).status == 401)
            #expect(try await daemon.login("ana").status == 401)
            try await daemon.stop()
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func metricsTakeTheBearerTokenOnly() async throws {
        try await withTemporaryDirectory { directory in
            let daemon = try await SecuredMeterd.start(in: directory)
            defer { daemon.meterd.process.stop() }
            let bare = try await daemon.get("/metrics", session: nil)
            #expect(bare.status == 401 && bare.header("WWW-Authenticate")?.hasPrefix("Bearer") == true)
            let wrong = try await httpRequest(port: daemon.http, "/metrics", headers: ["Authorization": "Bearer metrics-token-0123456789abcdeX"])
            #expect(wrong.status == 401)
            // A dashboard session is not a metrics token.
            #expect(try await daemon.get("/metrics", session: try await daemon.session("root")).status == 401)
            let scraped = try await httpRequest(port: daemon.http, "/metrics", headers: ["Authorization": "Bearer \(daemon.metricsToken)"])
            #expect(scraped.status == 200 && scraped.body.contains("meterd_"), "\(scraped.body.prefix(200))")
            try await daemon.stop()
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func withoutUsersEverythingStaysOpenAsBefore() async throws {
        try await withTemporaryDirectory { directory in
            let meterd = try MeterdUnderTest.start(dataDirectory: directory + "/data")
            defer { meterd.process.stop() }
            let port = try await meterd.ports().http
            for path in ["/", "/api/kpi", "/api/status", "/metrics", "/healthz"] {
                #expect(try await httpRequest(port: port, path).status == 200, "\(path)")
            }
            let session = try await httpRequest(port: port, "/api/session")
            #expect(session.json["authentication"] as? Bool == false && session.json["user"] is NSNull)
            #expect(try await httpRequest(port: port, "/login", method: "POST", body: "username=a&password=b").status == 404)
            #expect(try await httpRequest(port: port, "/login").header("Location") == "/")
            #expect(try await meterd.terminate() == 0)
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func httpsServesTheDashboardAndMarksTheCookieSecure() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki")
            let daemon = try await SecuredMeterd.start(
                in: directory, arguments: ["--http-tls-cert", pki.serverCertificate, "--http-tls-key", pki.serverKey])
            defer { daemon.meterd.process.stop() }
            let client = try pki.clientContext(nil)
            let health = try await httpRequest(port: daemon.http, "/healthz", tls: client)
            #expect(health.status == 200, "\(daemon.meterd.process.output)")
            let login = try await httpRequest(
                port: daemon.http, "/login", method: "POST", body: "username=root&password=correct+horse+battery", tls: client)
            #expect(login.status == 303)
            let cookie = try #require(login.headers("Set-Cookie").first)
            #expect(cookie.contains("Secure") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "\(cookie)")
            let token = try #require(login.sessionCookie)
            let kpi = try await httpRequest(port: daemon.http, "/api/kpi", headers: ["Cookie": "\(HTTPAccess.cookieName)=\(token)"], tls: client)
            #expect(kpi.status == 200 && number(kpi.json["total_customers"]) == 60)
            // Plain HTTP to the HTTPS port gets no HTTP answer.
            #expect(try await httpRequest(port: daemon.http, "/healthz").status == 0)
            #expect(daemon.meterd.process.output.contains("HTTPS on"))
            try await daemon.stop()
        }
    }

    /// SIGHUP reloads the HTTPS certificate and key as it does the ingest port's: new connections
    /// get the new pair; unusable files are logged and the old pair stays.
    @Test(.timeLimit(.minutes(2)))
    func sighupReloadsTheHTTPSCertificate() async throws {
        try await withTemporaryDirectory { directory in
            let old = try await TestPKI.make(in: directory + "/old")
            let new = try await TestPKI.make(in: directory + "/new")
            let live = (certificate: directory + "/live.pem", key: directory + "/live.key")
            func install(_ pki: TestPKI) throws {
                for (from, to) in [(pki.serverCertificate, live.certificate), (pki.serverKey, live.key)] {
                    try? FileManager.default.removeItem(atPath: to)
                    try FileManager.default.copyItem(atPath: from, toPath: to)
                }
            }
            try install(old)
            let daemon = try await SecuredMeterd.start(in: directory, arguments: ["--http-tls-cert", live.certificate, "--http-tls-key", live.key])
            defer { daemon.meterd.process.stop() }
            #expect(try await httpRequest(port: daemon.http, "/healthz", tls: try old.clientContext(nil)).status == 200)

            // Given files that cannot be used, the old pair stays
            try "not a key\n".write(toFile: live.key, atomically: true, encoding: .utf8)
            daemon.meterd.process.signal(SIGHUP)
            try await waitUntil { daemon.meterd.process.output.contains("HTTPS reload failed; new HTTP connections keep the previous certificate") }
            #expect(try await httpRequest(port: daemon.http, "/healthz", tls: try old.clientContext(nil)).status == 200)

            // When the new pair is in place and meterd gets SIGHUP
            try install(new)
            daemon.meterd.process.signal(SIGHUP)
            try await waitUntil { daemon.meterd.process.output.contains("HTTPS certificate reloaded; new HTTP connections use it") }
            #expect(daemon.meterd.process.exitStatus == nil, "SIGHUP must not stop meterd")

            // Then new connections get it: a client of the new CA is served, one that trusts only the old CA refuses it
            #expect(try await httpRequest(port: daemon.http, "/healthz", tls: try new.clientContext(nil)).status == 200)
            let stale = try? await httpRequest(port: daemon.http, "/healthz", tls: try old.clientContext(nil))
            #expect(stale == nil || stale?.status == 0, "a client of the old CA was served: \(String(describing: stale))")
            try await daemon.stop()
        }
    }

    /// Without certificates SIGHUP changes nothing and does not stop meterd: `systemctl reload` is safe.
    @Test(.timeLimit(.minutes(2)))
    func sighupWithoutCertificatesLeavesMeterdRunning() async throws {
        try await withTemporaryDirectory { directory in
            let meterd = try MeterdUnderTest.start(dataDirectory: directory + "/data")
            defer { meterd.process.stop() }
            let port = try await meterd.ports().http
            meterd.process.signal(SIGHUP)
            try await waitUntil { meterd.process.output.contains("SIGHUP: nothing to reload") }
            #expect(meterd.process.exitStatus == nil)
            #expect(try await httpRequest(port: port, "/healthz").status == 200)
            #expect(try await meterd.terminate() == 0)
        }
    }

    // MARK: Refusing to start

    /// Runs the real meterd to its exit; its one line and status.
    func refusal(_ arguments: [String], directory: String) async throws -> (status: Int32, stderr: String) {
        let binary = try BuiltProduct.path("meterd")
        let command = [binary, "--data-dir", directory + "/data", "--status-socket", directory + "/status.sock"] + arguments
        let result = try await offPool { try runProgram(command) }
        return (result.status, result.stderr)
    }

    @Test(.timeLimit(.minutes(2)))
    func meterdRefusesToStartOpenToTheNetworkWithOneLine() async throws {
        try await withTemporaryDirectory { directory in
            let http = try await self.refusal(["--http", "0.0.0.0:0", "--ingest", "127.0.0.1:0"], directory: directory)
            #expect(http.status == 2)
            #expect(http.stderr.split(separator: "\n").count == 1, "\(http.stderr)")
            #expect(
                http.stderr.hasPrefix(
                    "meterd: invalid configuration: http: 0.0.0.0:0 is reachable from the network and no http_users are set"),
                "\(http.stderr)")
            #expect(http.stderr.contains("allow_insecure = true"))

            let ingest = try await self.refusal(["--http", "127.0.0.1:0", "--ingest", "[::]:0"], directory: directory)
            #expect(ingest.status == 2 && ingest.stderr.split(separator: "\n").count == 1, "\(ingest.stderr)")
            #expect(ingest.stderr.hasPrefix("meterd: invalid configuration: ingest: [::]:0 is reachable from the network with meter_auth = none"))

            // The same in a config file.
            try "ingest = 0.0.0.0:0\nhttp = 127.0.0.1:0\n".write(toFile: directory + "/open.conf", atomically: true, encoding: .utf8)
            let file = try await self.refusal(["--config", directory + "/open.conf"], directory: directory)
            #expect(file.status == 2 && file.stderr.hasPrefix("meterd: invalid configuration: ingest:"), "\(file.stderr)")

            // Settings that do not fit together, or files that are not there, also stop it with one line.
            let halfTLS = try await self.refusal(
                ["--http", "127.0.0.1:0", "--ingest", "127.0.0.1:0", "--http-tls-cert", "/x.pem"], directory: directory)
            #expect(halfTLS.status == 2 && halfTLS.stderr.hasPrefix("meterd: invalid configuration: http_tls_key:"), "\(halfTLS.stderr)")
            let noUsers = try await self.refusal(
                ["--http", "0.0.0.0:0", "--ingest", "127.0.0.1:0", "--http-users", directory + "/missing"], directory: directory)
            #expect(noUsers.status == 2 && noUsers.stderr.hasPrefix("meterd: invalid configuration: http_users:"), "\(noUsers.stderr)")
            #expect(noUsers.stderr.contains("no such file"))
            try "short\n".write(toFile: directory + "/short.token", atomically: true, encoding: .utf8)
            let badToken = try await self.refusal(
                ["--http", "127.0.0.1:0", "--ingest", "127.0.0.1:0", "--metrics-token-file", directory + "/short.token"], directory: directory)
            #expect(badToken.status == 2 && badToken.stderr.hasPrefix("meterd: invalid configuration: metrics_token_file:"), "\(badToken.stderr)")
            let notBool = try await self.refusal(["--allow-insecure", "maybe"], directory: directory)
            #expect(notBool.status == 2 && notBool.stderr.hasPrefix("meterd: invalid configuration: allow_insecure:"), "\(notBool.stderr)")
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func allowInsecureStartsOpenToTheNetworkWithAWarning() async throws {
        try await withTemporaryDirectory { directory in
            let meterd = try MeterdUnderTest.start(
                dataDirectory: directory + "/data", arguments: ["--http", "0.0.0.0:0", "--ingest", "0.0.0.0:0", "--allow-insecure", "true"])
            defer { meterd.process.stop() }
            let port = try await meterd.ports().http
            #expect(try await httpRequest(port: port, "/api/kpi").status == 200)
            #expect(meterd.process.output.contains("warning"))
            #expect(meterd.process.output.contains("Listening on the network without authentication because allow_insecure = true"))
            #expect(try await meterd.terminate() == 0)
        }
    }

    @Test func loopbackIsLocalhostOr127Or1AndNothingElse() throws {
        for host in ["127.0.0.1", "127.8.9.10", "::1", "localhost", "::ffff:127.0.0.1"] {
            #expect(ListenAddress(host: host, port: 1).isLoopback, "\(host)")
        }
        for host in ["0.0.0.0", "::", "10.0.0.1", "192.168.1.5", "fe80::1", "meterd.example.com", "128.0.0.1"] {
            #expect(!ListenAddress(host: host, port: 1).isLoopback, "\(host)")
        }
        // A socket systemd passed counts by the address it is bound to.
        func bound(_ address: String) throws -> CInt {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var raw = sockaddr_in()
            raw.sin_family = sa_family_t(AF_INET)
            raw.sin_addr.s_addr = inet_addr(address)
            let ok = withUnsafePointer(to: &raw) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            try #require(ok)
            return fd
        }
        let local = try bound("127.0.0.1")
        let open = try bound("0.0.0.0")
        defer {
            close(local)
            close(open)
        }
        #expect(LocalSocketAddress.isLoopback(descriptor: local))
        #expect(!LocalSocketAddress.isLoopback(descriptor: open))
        var configuration = DaemonConfiguration()
        #expect(throws: ConfigurationError.self) { try configuration.validateExposure(inheritedSockets: InheritedSockets(ingest: open)) }
        #expect(throws: ConfigurationError.self) { try configuration.validateExposure(inheritedSockets: InheritedSockets(http: open)) }
        try configuration.validateExposure(inheritedSockets: InheritedSockets(ingest: local, http: local))
        configuration.allowInsecure = true
        try configuration.validateExposure(inheritedSockets: InheritedSockets(ingest: open, http: open))
    }

    @Test func theDeployedExampleConfigSaysAllowInsecureExplicitly() throws {
        let deploy = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Deploy/meterd.conf").standardized.path
        var configuration = DaemonConfiguration()
        try configuration.load(configFile: try String(contentsOfFile: deploy, encoding: .utf8), path: "meterd.conf")
        #expect(configuration.allowInsecure)
        #expect(configuration.httpUsers == nil && configuration.httpTLSCertificate == nil)
        // Without it, its 0.0.0.0 ingest with meter_auth = none would be refused.
        configuration.allowInsecure = false
        #expect(throws: ConfigurationError(key: "ingest", "")) {
            do {
                try configuration.validateExposure()
            } catch let error as ConfigurationError {
                throw ConfigurationError(key: error.key, "")
            }
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func theDeployedConfigBehindMeterdSocketOnEveryAddressStartsOnlyWithAllowInsecure() async throws {
        try await withTemporaryDirectory { directory in
            // A listening socket on 0.0.0.0, as meterd.socket's ListenStream=7700 passes it.
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = INADDR_ANY
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let ok = withUnsafeMutablePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, length) == 0 && listen(fd, 16) == 0 && getsockname(fd, $0, &length) == 0
                }
            }
            try #require(ok)
            defer { close(fd) }
            let port = Int(UInt16(bigEndian: address.sin_port))
            let deployed = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
                .appendingPathComponent("../../Deploy/meterd.conf").standardized.path
            let text = try String(contentsOfFile: deployed, encoding: .utf8)
            let strict = directory + "/strict.conf"
            try text.replacingOccurrences(of: "\nallow_insecure = true\n", with: "\n").write(toFile: strict, atomically: true, encoding: .utf8)
            let activation = (
                environment: ["LISTEN_FDS": "1", "LISTEN_FDNAMES": "ingest"], wrapper: ["/bin/sh", "-c", #"LISTEN_PID=$$ exec "$@""#, "sh"]
            )

            let refused = try MeterdUnderTest.start(
                dataDirectory: directory + "/strict", arguments: ["--config", strict], environment: activation.environment,
                wrapper: activation.wrapper, inheritedFDs: [fd])
            defer { refused.process.stop() }
            #expect(try await refused.process.waitForExit() == 2)
            // Before it, only the log line that says which sockets systemd passed.
            let lines = refused.process.output.split(separator: "\n")
            let line = String(lines.last ?? "")
            #expect(lines.filter { $0.hasPrefix("meterd: ") }.count == 1, "\(lines)")
            #expect(
                line.hasPrefix(
                    "meterd: invalid configuration: ingest: the socket systemd passed (fd 3, 0.0.0.0:\(port)) is reachable from the network with meter_auth = none"
                ), "\(line)")

            let started = try MeterdUnderTest.start(
                dataDirectory: directory + "/deployed", arguments: ["--config", deployed], environment: activation.environment,
                wrapper: activation.wrapper, inheritedFDs: [fd])
            defer { started.process.stop() }
            #expect(try await started.ports().ingest == port)
            #expect(started.process.output.contains("Listening on the network without authentication because allow_insecure = true"))
            #expect(started.process.output.contains("the socket systemd passed"))
            #expect(try await started.terminate() == 0)
        }
    }

    // MARK: The users file and meterctl user

    @Test func theUsersFileParsesRolesScopesAndRefusesBadLines() throws {
        let hash = HTTPUser.hash(password: "password1", cost: 4)
        let file = try HTTPUserFile.parse(
            "# comment\n\nroot:admin:*:\(hash)\nana:viewer:North:\(hash)\nbo:viewer:Sub:Region:\(hash)\n", path: "users")
        #expect(file.users.map(\.username) == ["root", "ana", "bo"])
        #expect(file.users.map(\.scope) == [.all, .region("North"), .region("Sub:Region")])
        #expect(file.users[1].verify(password: "password1") && !file.users[1].verify(password: "password2"))
        #expect(try HTTPUserFile.parse(file.text, path: "users") == file)
        func refusal(_ line: String) -> String? {
            do {
                _ = try HTTPUserFile.parse(line + "\n", path: "users")
                return nil
            } catch {
                #expect(error.key == "http_users")
                return error.message
            }
        }
        #expect(refusal("root:admin:North:\(hash)")?.contains("an admin sees every region") == true)
        #expect(refusal("root:boss:*:\(hash)")?.contains("role must be admin or viewer") == true)
        #expect(refusal("root:viewer:*:plaintext")?.contains("bcrypt hash") == true)
        #expect(refusal("ro ot:viewer:*:\(hash)")?.contains("user name") == true)
        #expect(refusal("root:viewer:\(hash)")?.contains("expected username:role:scope:bcrypt-hash") == true)
        #expect(refusal("a:viewer:*:\(hash)\na:admin:*:\(hash)")?.contains("listed twice") == true)
        #expect(refusal("a:viewer:*:\(hash)\na:admin:*:\(hash)")?.hasPrefix("users:2:") == true)
    }

    @Test(.timeLimit(.minutes(1)))
    func meterctlUserAddListRemoveKeepsPasswordsOutOfArgvAndTheFilePrivate() async throws {
        try await withTemporaryDirectory { directory in
            let meterctl = try BuiltProduct.path("meterctl")
            let file = directory + "/users"
            try await SecuredMeterd.addUser("ana", ["--scope", "North"], file: file, password: "first password")
            try await SecuredMeterd.addUser("root", ["--role", "admin"], file: file)
            let mode = try #require(try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? NSNumber)
            #expect(mode.intValue == 0o640)
            let text = try String(contentsOfFile: file, encoding: .utf8)
            #expect(!text.contains("first password"))
            let users = try HTTPUserFile.load(path: file).users
            #expect(users.map(\.username) == ["ana", "root"] && users[0].scope == .region("North") && users[1].role == .admin)
            #expect(users[0].verify(password: "first password"))

            let list = try await offPool { try runProgram([meterctl, "user", "list", "--file", file]) }
            #expect(list.status == 0 && list.stdout.contains("ana") && list.stdout.contains("North") && !list.stdout.contains("$2b$"))
            let json = try await offPool { try runProgram([meterctl, "user", "list", "--file", file, "--json"]) }
            #expect(
                json.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
                    == #"[{"user":"ana","role":"viewer","scope":"North"},{"user":"root","role":"admin","scope":"*"}]"#)

            // A new password replaces the old; refusals are one line and non-zero.
            try await SecuredMeterd.addUser("ana", ["--scope", "North"], file: file, password: "second password")
            #expect(try HTTPUserFile.load(path: file).users.first { $0.username == "ana" }?.verify(password: "second password") == true)
            let adminScoped = try await offPool {
                try runProgram([meterctl, "user", "add", "x", "--role", "admin", "--scope", "North", "--file", file], input: "password1\n")
            }
            #expect(adminScoped.status != 0 && adminScoped.stderr.contains("An admin sees every region"))
            let short = try await offPool { try runProgram([meterctl, "user", "add", "x", "--file", file, "--cost", "4"], input: "short\n") }
            #expect(short.status == 1 && short.stderr == "meterctl: the password must have at least 8 characters\n")
            let noPassword = try await offPool { try runProgram([meterctl, "user", "add", "x", "--file", file, "--cost", "4"], input: "") }
            #expect(noPassword.status == 1 && noPassword.stderr.contains("no password on stdin"))

            let removed = try await offPool { try runProgram([meterctl, "user", "remove", "ana", "--file", file]) }
            #expect(removed.status == 0)
            #expect(try HTTPUserFile.load(path: file).users.map(\.username) == ["root"])
            let again = try await offPool { try runProgram([meterctl, "user", "remove", "ana", "--file", file]) }
            #expect(again.status == 1 && again.stderr.contains("no user ana"))
        }
    }
}
