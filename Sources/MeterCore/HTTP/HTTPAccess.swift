import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// Who may use the dashboard, the API and `/metrics` (SPEC.md section 10).
package struct HTTPAccessConfiguration: Sendable {
    /// The users; `nil` when `http_users` is not set, and then nobody is asked to log in.
    package var users: HTTPUserDirectory?
    /// The bearer token `/metrics` asks for; with users and no token `/metrics` is closed.
    package var metricsToken: String?
    /// How long a login lasts.
    package var sessionTTL: Duration
    /// Whether the session cookie is marked `Secure` (HTTPS).
    package var secureCookies: Bool
    /// Failed logins allowed per user name and per client address within ``failureWindow``…
    package var failuresPerUser: Int
    package var failuresPerAddress: Int
    /// …before further attempts are answered 429 until the oldest failure leaves the window.
    package var failureWindow: Duration

    package init(
        users: HTTPUserDirectory? = nil, metricsToken: String? = nil, sessionTTL: Duration = .seconds(28_800),
        secureCookies: Bool = false, failuresPerUser: Int = 5, failuresPerAddress: Int = 20, failureWindow: Duration = .seconds(60)
    ) {
        self.users = users
        self.metricsToken = metricsToken
        self.sessionTTL = sessionTTL
        self.secureCookies = secureCookies
        self.failuresPerUser = failuresPerUser
        self.failuresPerAddress = failuresPerAddress
        self.failureWindow = failureWindow
    }

    /// Reads the token file: its first line, trimmed; an empty or unreadable file names `metrics_token_file`.
    package static func readMetricsToken(path: String) throws(ConfigurationError) -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError(
                key: "metrics_token_file",
                FileManager.default.fileExists(atPath: path) ? "cannot read \(path) (permission denied?)" : "\(path): no such file")
        }
        let token = String(decoding: data, as: UTF8.self).split(separator: "\n").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        guard token.utf8.count >= 16, token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw ConfigurationError(key: "metrics_token_file", "\(path) must hold a token of at least 16 printable characters on its first line")
        }
        return token
    }
}

/// Where dashboard sessions live beyond one node's memory (``MeterStore/makeSessionStore()``), so
/// that every node of a shared store honours a login and a logout made on any of them.
package protocol HTTPSessionStore: Sendable {
    /// Records a session; sessions expired by `nowMs` may go at the same time.
    func create(token: String, username: String, expiresMs: Int64, nowMs: Int64) async throws
    /// The user name of the session, if it exists and has not expired by `nowMs`.
    func username(token: String, nowMs: Int64) async throws -> String?
    func end(token: String) async throws
}

/// Logged-in sessions. In memory on a store of one node (they end when meterd restarts, and users
/// log in again); with an ``HTTPSessionStore`` (PostgreSQL) they are recorded there as well, and a
/// node asks it again once its own knowledge of a session is ``confirmationMs`` old.
package final class HTTPSessions: Sendable {
    private struct Session {
        var username: String
        var expiresMs: Int64
        /// When the store last said the session exists (the login, on the node that made it).
        var confirmedMs: Int64
    }
    private let sessions = Mutex<[String: Session]>([:])
    private let ttlMs: Int64
    private let store: (any HTTPSessionStore)?
    private let clock: @Sendable () -> Int64
    /// How long a node answers from memory for a session kept in the store: a logout on another
    /// node ends the session here within this, at the cost of one query per session this often.
    package static let confirmationMs: Int64 = 2_000
    /// Tokens are 32 bytes in hex: anything else is refused without asking the store.
    static let tokenLength = 64

    package init(ttl: Duration, store: (any HTTPSessionStore)? = nil, clock: @escaping @Sendable () -> Int64 = { WallClock.nowMs() }) {
        self.ttlMs = ttl.milliseconds
        self.store = store
        self.clock = clock
    }

    /// Starts a session and returns its token: 32 random bytes as hex, from the system's CSPRNG.
    /// Throws when the store does not take it: a login other nodes would not honour is no login.
    package func start(username: String) async throws -> String {
        var generator = SystemRandomNumberGenerator()
        let token = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: .min ... .max, using: &generator)) }.joined()
        let now = self.clock()
        try await self.store?.create(token: token, username: username, expiresMs: now + self.ttlMs, nowMs: now)
        self.sessions.withLock { sessions in
            sessions = sessions.filter { $0.value.expiresMs > now }  // expired ones go when a new one comes
            sessions[token] = Session(username: username, expiresMs: now + self.ttlMs, confirmedMs: now)
        }
        return token
    }

    /// The user name of a live session; an expired one is forgotten.
    package func username(for token: String) async -> String? {
        guard token.utf8.count == Self.tokenLength else { return nil }
        let now = self.clock()
        let known = self.sessions.withLock { sessions -> Session? in
            guard let session = sessions[token] else { return nil }
            guard session.expiresMs > now else {
                sessions[token] = nil
                return nil
            }
            return session
        }
        guard let store = self.store else { return known?.username }
        if let known, now - known.confirmedMs < Self.confirmationMs { return known.username }
        do {
            let username = try await store.username(token: token, nowMs: now)
            self.sessions.withLock { sessions in
                sessions[token] = username.map {
                    Session(username: $0, expiresMs: known?.expiresMs ?? now + self.ttlMs, confirmedMs: now)
                }
            }
            return username
        } catch {
            // The store does not answer: a session this node knows stays usable until it expires
            // (a logout elsewhere takes effect once the store answers again); others wait for it.
            return known?.username
        }
    }

    /// Ends a session here and, with a store, on every node; throws when the store did not take it.
    package func end(_ token: String) async throws {
        _ = self.sessions.withLock { $0.removeValue(forKey: token) }
        guard token.utf8.count == Self.tokenLength else { return }
        try await self.store?.end(token: token)
    }

    /// Sessions this node knows that have not expired.
    package var count: Int {
        let now = self.clock()
        return self.sessions.withLock { $0.values.filter { $0.expiresMs > now }.count }
    }
}

/// Counts failed logins per key (user name, client address) over a sliding window.
package final class LoginThrottle: Sendable {
    private let failures = Mutex<[String: [Int64]]>([:])
    private let windowMs: Int64
    private let clock: @Sendable () -> Int64

    package init(window: Duration, clock: @escaping @Sendable () -> Int64 = { WallClock.nowMs() }) {
        self.windowMs = window.components.seconds * 1000 + window.components.attoseconds / 1_000_000_000_000_000
        self.clock = clock
    }

    /// What `admit` decided about one login attempt.
    package enum Admission: Equatable, Sendable {
        /// Counted as a failure under every key until `succeeded(_:admittedAt:)` says otherwise.
        case admitted(atMs: Int64)
        /// A key has reached its limit: seconds until it may try again.
        case refused(retryAfterSeconds: Int)
    }

    /// Checks every key against its limit and, when none has reached it, counts the attempt as a
    /// failure under each in the same step. The password check takes a few hundred milliseconds:
    /// attempts made meanwhile must see this one, or a burst of them all pass the check at once.
    package func admit(_ keys: [(key: String, limit: Int)]) -> Admission {
        let now = self.clock()
        return self.failures.withLock { failures in
            for (key, limit) in keys {
                let recent = (failures[key] ?? []).filter { $0 > now - self.windowMs }
                failures[key] = recent.isEmpty ? nil : recent
                if recent.count >= limit {
                    return .refused(retryAfterSeconds: Int((recent[recent.count - limit] + self.windowMs - now + 999) / 1000))
                }
            }
            for (key, _) in keys { failures[key, default: []].append(now) }
            if failures.count > 100_000 {  // a flood of made-up names must not grow this without bound
                failures = failures.filter { $0.value.last ?? 0 > now - self.windowMs }
            }
            return .admitted(atMs: now)
        }
    }

    /// The attempt admitted at `admittedAt` was right: it no longer counts under `key`.
    package func succeeded(_ key: String, admittedAt: Int64) {
        self.failures.withLock { failures in
            guard var times = failures[key], let index = times.lastIndex(of: admittedAt) else { return }
            times.remove(at: index)
            failures[key] = times.isEmpty ? nil : times
        }
    }

    package func clear(_ key: String) {
        _ = self.failures.withLock { $0.removeValue(forKey: key) }
    }
}

/// Login, logout and the checks in front of every route (SPEC.md section 10).
///
/// Without `http_users` everything stays open, as before. With them: `/healthz`, `/readyz` and
/// `/login` are open; `/metrics` takes `Authorization: Bearer <metrics token>`; every other path
/// needs the session cookie a form login sets, or answers 401 (`/api/…`) or redirects to `/login`.
/// Register it on the router before any route, so it runs in front of them all:
///
/// ```swift
/// let router = Router(context: MeterRequestContext.self)
/// HTTPAccess(configuration: access, logger: logger).register(on: router)
/// DashboardRoutes(…).register(on: router)
/// ```
package struct HTTPAccess: Sendable {
    package static let cookieName = "meterd_session"
    package let configuration: HTTPAccessConfiguration
    package let sessions: HTTPSessions
    let throttle: LoginThrottle
    private let logger: Logger

    /// - Parameter sessionStore: where sessions live so that several nodes honour them
    ///   (``MeterStore/makeSessionStore()``); `nil` keeps them in this node's memory.
    package init(configuration: HTTPAccessConfiguration, sessionStore: (any HTTPSessionStore)? = nil, logger: Logger) {
        self.configuration = configuration
        self.sessions = HTTPSessions(ttl: configuration.sessionTTL, store: sessionStore)
        self.throttle = LoginThrottle(window: configuration.failureWindow)
        self.logger = logger
    }

    package func register(on router: Router<MeterRequestContext>) {
        router.add(middleware: HTTPAccessMiddleware(access: self))
        router.get("login") { request, _ in
            // Without users there is nothing to log in to: straight to the dashboard.
            let next = Self.dashboardView(request.uri.queryParameters["next"].map(String.init))
            return self.configuration.users == nil
                ? Response(status: .seeOther, headers: [.location: next]) : Self.loginPage(status: .ok, message: nil, next: next)
        }
        router.post("login") { request, context in try await self.login(request, context: context) }
        router.post("logout") { request, _ in await self.logout(request) }
        // Who is logged in, for the dashboard's header and its region filter.
        router.get("api/session") { _, context in
            let user = context.user
            return DashboardRoutes.json(
                JSONValue.object([
                    ("authentication", .bool(self.configuration.users != nil)),
                    ("user", .optional(user) { .string($0.username) }),
                    ("role", .optional(user) { .string($0.role.rawValue) }),
                    ("scope", .optional(user) { .string($0.scope.description) }),
                ]).serialized)
        }
    }

    // MARK: The check in front of every route

    enum Decision {
        case open
        case user(HTTPUser)
        case refuse(Response)
    }

    func decide(_ request: Request, context: MeterRequestContext) async -> Decision {
        let path = request.uri.path
        if path == "/healthz" || path == "/readyz" { return .open }
        if path == "/metrics" { return self.metricsDecision(request) }
        guard let users = self.configuration.users else { return .open }
        if path == "/login" { return .open }
        if let token = request.cookies[Self.cookieName]?.value, let name = await self.sessions.username(for: token) {
            if let user = users.user(named: name) { return .user(user) }
            try? await self.sessions.end(token)  // the user was removed from the file
        }
        if path == "/logout" { return .refuse(Self.redirectToLogin(clearCookie: self.configuration.secureCookies)) }
        if path.hasPrefix("/api/") {
            return .refuse(
                DashboardError(.unauthorized, code: "unauthorized", message: "Log in first: POST user and password to /login.")
                    .plainResponse)
        }
        // A shared link to a dashboard view (`/?from=…&region=…`) opens that view after the login.
        let view = path == "/" && !(request.uri.query ?? "").isEmpty ? request.uri.description : nil
        return .refuse(Self.redirectToLogin(clearCookie: nil, next: view))
    }

    private func metricsDecision(_ request: Request) -> Decision {
        guard let token = self.configuration.metricsToken else {
            guard self.configuration.users != nil else { return .open }
            return .refuse(
                Self.metricsRefusal("/metrics is closed: meterd has http_users but no metrics_token_file."))
        }
        let offered = request.headers[.authorization].flatMap { value -> Substring? in
            let prefix = "Bearer "
            guard value.count > prefix.count, value.prefix(prefix.count).lowercased() == prefix.lowercased() else { return nil }
            return value.dropFirst(prefix.count)
        }
        guard let offered, Self.constantTimeEqual(Array(offered.utf8), Array(token.utf8)) else {
            return .refuse(Self.metricsRefusal("/metrics needs Authorization: Bearer <the token in metrics_token_file>."))
        }
        return .open
    }

    private static func metricsRefusal(_ message: String) -> Response {
        var response = DashboardError(.unauthorized, code: "unauthorized", message: message).plainResponse
        response.headers[.wwwAuthenticate] = #"Bearer realm="meterd""#
        return response
    }

    /// Compares every byte whatever the first difference, so the time taken does not tell how much of a guess was right.
    static func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
        return difference == 0
    }

    // MARK: Login and logout

    func login(_ request: Request, context: MeterRequestContext) async throws -> Response {
        guard let users = self.configuration.users else {
            throw DashboardError.notFound("No login here: meterd has no http_users.")
        }
        let body = try await request.body.collect(upTo: 16_384)
        let form = Self.formFields(String(buffer: body))
        let username = form["username"] ?? ""
        let password = form["password"] ?? ""
        let next = Self.dashboardView(form["next"])
        let userKey = "user:" + username
        let addressKey = "address:" + context.peer
        var logger = self.logger
        logger[metadataKey: "http.user"] = "\(username.prefix(64))"
        logger[metadataKey: "http.peer"] = "\(context.peer)"
        let admittedAt: Int64
        switch self.throttle.admit([(userKey, self.configuration.failuresPerUser), (addressKey, self.configuration.failuresPerAddress)]) {
        case .refused(let wait):
            logger.warning("HTTP login refused: too many wrong passwords", metadata: ["http.retry_after_s": "\(wait)"])
            var response = Self.loginPage(
                status: .tooManyRequests, message: "Too many wrong passwords. Try again in \(wait) seconds.", username: username,
                next: next)
            response.headers[.retryAfter] = "\(wait)"
            return response
        case .admitted(let atMs):
            admittedAt = atMs
        }
        let user = HTTPUser.isValidUsername(username) ? users.user(named: username) : nil
        // bcrypt takes a few hundred milliseconds on purpose: off the event loops. An unknown user
        // is checked against a dummy hash, so the answer takes as long as for a wrong password.
        let verified = try await NIOThreadPool.singleton.runIfActive {
            guard let user else {
                _ = HTTPUser(username: "-", role: .viewer, scope: .all, passwordHash: Self.dummyHash).verify(password: password)
                return false
            }
            return user.verify(password: password)
        }
        guard verified, let user else {
            logger.warning("HTTP login failed: wrong user name or password", metadata: ["http.user_known": "\(user != nil)"])
            return Self.loginPage(status: .unauthorized, message: "Wrong user name or password.", username: username, next: next)
        }
        self.throttle.clear(userKey)
        self.throttle.succeeded(addressKey, admittedAt: admittedAt)
        let token: String
        do {
            token = try await self.sessions.start(username: user.username)
        } catch {
            logger.error("HTTP login failed: the session could not be recorded", metadata: ["error": "\(error)"])
            return Self.loginPage(
                status: .serviceUnavailable, message: "Logins are unavailable: the database does not answer. Try again shortly.",
                username: username, next: next)
        }
        logger.info("HTTP login", metadata: ["http.role": "\(user.role.rawValue)", "http.scope": "\(user.scope)"])
        var response = Response(status: .seeOther, headers: [.location: next, .cacheControl: "no-store"])
        response.setCookie(self.sessionCookie(token, maxAge: Int(self.configuration.sessionTTL.components.seconds)))
        return response
    }

    func logout(_ request: Request) async -> Response {
        if let token = request.cookies[Self.cookieName]?.value {
            do {
                try await self.sessions.end(token)
            } catch {
                // Ended here; other nodes still honour it until it expires or the next logout reaches the store.
                self.logger.warning("HTTP logout not recorded in the store: other nodes keep the session", metadata: ["error": "\(error)"])
            }
        }
        return Self.redirectToLogin(clearCookie: self.configuration.secureCookies)
    }

    private func sessionCookie(_ value: String, maxAge: Int) -> Cookie {
        Cookie(
            name: Self.cookieName, value: value, maxAge: maxAge, path: "/", secure: self.configuration.secureCookies,
            httpOnly: true, sameSite: .strict)
    }

    /// 303 to `/login` (with the dashboard view to open after it, `next`); with `clearCookie` set
    /// (to whether it is `Secure`), also ends the cookie.
    static func redirectToLogin(clearCookie secure: Bool?, next: String? = nil) -> Response {
        let location = next.flatMap { $0.addingPercentEncoding(withAllowedCharacters: .alphanumerics) }.map { "/login?next=" + $0 } ?? "/login"
        var response = Response(status: .seeOther, headers: [.location: location, .cacheControl: "no-store"])
        if let secure {
            response.setCookie(Cookie(name: Self.cookieName, value: "", maxAge: 0, path: "/", secure: secure, httpOnly: true, sameSite: .strict))
        }
        return response
    }

    /// Where a login leads: the dashboard view asked for (`/?…` on this server), else the dashboard.
    /// Nothing else: a login form must not send anyone to another site or another path.
    static func dashboardView(_ next: String?) -> String {
        guard let next, next.hasPrefix("/?"), !next.contains("\\"), !next.contains(where: \.isNewline) else { return "/" }
        return next
    }

    /// A bcrypt hash of no one's password (cost 12, as `meterctl user add` makes them).
    static let dummyHash = HTTPUser.hash(password: "meterd: no such user", cost: 12)

    /// `application/x-www-form-urlencoded` fields; the last of a repeated name wins.
    static func formFields(_ text: String) -> [String: String] {
        var fields: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ part: Substring) -> String {
                String(part).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? ""
            }
            fields[decode(parts[0])] = parts.count > 1 ? decode(parts[1]) : ""
        }
        return fields
    }

    /// The login form; `message` says why it is shown again.
    static func loginPage(status: HTTPResponse.Status, message: String?, username: String = "", next: String = "/") -> Response {
        func escape(_ text: String) -> String {
            text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
                .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
        }
        let notice = message.map { #"<p id="login-error" role="alert">\#(escape($0))</p>"# } ?? ""
        let html = """
            <!doctype html>
            <html lang="en">
            <head>
            <meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <link rel="icon" href="data:,">
            <title>meterd: log in</title>
            <style>
            body { font-family: system-ui, sans-serif; background: #f1f5f9; color: #0f172a; display: flex; justify-content: center; padding-top: 12vh; }
            form { background: #fff; padding: 2rem; border-radius: 8px; box-shadow: 0 1px 4px #0002; min-width: 18rem; }
            label { display: block; margin: .8rem 0 .2rem; }
            input { width: 100%; box-sizing: border-box; padding: .4rem; font-size: 1rem; }
            button { margin-top: 1.2rem; padding: .5rem 1.2rem; font-size: 1rem; }
            #login-error { color: #b91c1c; }
            </style>
            </head>
            <body>
            <form method="post" action="/login" id="login-form">
            <h1>meterd</h1>
            \(notice)
            <label for="username">User name</label>
            <input id="username" name="username" autocomplete="username" required value="\(escape(username))">
            <label for="password">Password</label>
            <input id="password" name="password" type="password" autocomplete="current-password" required>
            <input type="hidden" name="next" value="\(escape(next))">
            <button type="submit" id="login-submit">Log in</button>
            </form>
            </body>
            </html>

            """
        return Response(
            status: status,
            headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(string: html)))
    }
}

/// Runs ``HTTPAccess/decide(_:context:)`` in front of every route and hands the user on.
struct HTTPAccessMiddleware: RouterMiddleware {
    typealias Context = MeterRequestContext
    let access: HTTPAccess

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        switch await self.access.decide(request, context: context) {
        case .open: return try await next(request, context)
        case .user(let user):
            var context = context
            context.user = user
            return try await next(request, context)
        case .refuse(let response): return response
        }
    }
}
