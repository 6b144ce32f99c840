import Foundation
import Hummingbird
import HummingbirdCore
import HTTPTypes
import Logging
import NIOCore

/// The dashboard at `/` and its JSON API (SPEC.md section 6): `/api/kpi`, `/api/regions`,
/// `/api/regions/{region}`, `/api/customers/{id}`, `/api/meters/{id}`, `/api/meters/{id}/readings`,
/// `/api/inactive` and `/api/status`.
///
/// Bad input answers 400 and unknown things 404, as `{"error":…,"message":…}` (``DashboardError``).
///
/// ```swift
/// let router = Router(context: MeterRequestContext.self)
/// DashboardRoutes(queries: queries, reporter: reporter, assets: DashboardAssets(chartJSPath: path), logger: logger)
///     .register(on: router)
/// ```
package struct DashboardRoutes: Sendable {
    package let queries: DashboardQueries
    /// Live ingest figures for `/api/status`; `nil` where no pipeline runs.
    package let reporter: StatusReporter?
    package let assets: DashboardAssets
    private let logger: Logger

    package init(queries: DashboardQueries, reporter: StatusReporter?, assets: DashboardAssets, logger: Logger) {
        self.queries = queries
        self.reporter = reporter
        self.assets = assets
        self.logger = logger
    }

    /// Longest region name accepted in a request.
    static let maximumRegionLength = 200

    package func register(on router: Router<MeterRequestContext>) {
        router.get("/") { _, _ in self.assets.page() }
        router.get("assets/dashboard.js") { _, _ in DashboardAssets.text(DashboardScript.source, type: "text/javascript; charset=utf-8") }
        router.get("assets/dashboard.css") { _, _ in DashboardAssets.text(DashboardStyle.source, type: "text/css; charset=utf-8") }
        router.get("assets/chart.js") { _, _ in try self.assets.chartJS() }

        router.get("api/kpi") { request, context in
            let query = request.uri.queryParameters
            let period = try self.period(query)
            let region = try Self.scoped(try Self.region(query), context)
            return Self.json(try await self.queries.kpi.json(period: period, region: region))
        }
        router.get("api/regions") { _, context in
            Self.json(try await self.queries.regions(only: context.regionScope).serialized)
        }
        router.get("api/regions/:region") { request, context in
            let region = try Self.pathParameter(context, "region")
            guard region.count <= Self.maximumRegionLength else {
                throw DashboardError.badRequest("region: longer than \(Self.maximumRegionLength) characters")
            }
            _ = try Self.scoped(region, context)
            let query = request.uri.queryParameters
            let period = try self.period(query)
            let page = try Self.pageRequest(query)
            guard let answer = try await self.queries.regionCustomers(region, period: period, request: page) else {
                throw DashboardError.notFound("No region \"\(region)\": no customer or meter belongs to it.")
            }
            return Self.json(answer.serialized)
        }
        router.get("api/customers/:id") { _, context in
            let text = try Self.pathParameter(context, "id")
            guard let id = Int64(text), id > 0 else {
                throw DashboardError.badRequest("customer id: expected a positive whole number, got \"\(text)\"")
            }
            guard let answer = try await self.queries.customer(id) else { throw DashboardError.notFound("No customer \(id).") }
            if context.regionScope != nil {
                // The answer names the customer's region: a region-scoped user gets it for theirs only.
                guard case .object(let fields) = answer, case .string(let region)? = fields.first(where: { $0.0 == "region" })?.1 else {
                    throw DashboardError.forbidden("Customer \(id) has no region.")
                }
                try Self.allow(region, context, what: "customer \(id)")
            }
            return Self.json(answer.serialized)
        }
        router.get("api/meters/:id") { _, context in
            let name = try Self.meterName(context)
            try await self.allowMeter(name, context)
            guard let answer = try await self.queries.meter(name) else { throw DashboardError.notFound("No meter \(name).") }
            return Self.json(answer.serialized)
        }
        router.get("api/meters/:id/readings") { request, context in
            let name = try Self.meterName(context)
            let limit = try Self.integer(request.uri.queryParameters, "limit", default: 50, range: 1...1000)
            try await self.allowMeter(name, context)
            guard let answer = try await self.queries.readings(name, limit: limit) else { throw DashboardError.notFound("No meter \(name).") }
            return Self.json(answer.serialized)
        }
        router.get("api/inactive") { request, context in
            let query = request.uri.queryParameters
            let limit = try Self.integer(query, "limit", default: 100, range: 1...10_000)
            let region = try Self.scoped(try Self.region(query), context)
            return Self.json(try AnswerEncoder.json(try await self.queries.inactive(region: region, limit: limit)))
        }
        router.get("api/status") { _, context in
            if let scope = context.regionScope {
                // Connections, throughput and meter counts are the whole fleet's, not one region's.
                throw DashboardError.forbidden("Live ingest figures cover every region; user \(context.user?.username ?? "") sees \(scope) only.")
            }
            guard let reporter = self.reporter else {
                throw DashboardError(.serviceUnavailable, code: "unavailable", message: "No ingest pipeline runs here.")
            }
            return Self.json(try AnswerEncoder.json(await reporter.status()))
        }
        router.get("api/**") { request, _ -> Response in
            throw DashboardError.notFound("No API endpoint \(request.uri.path) (see SPEC.md section 6).")
        }
    }

    // MARK: Region scope

    /// The region a request is about, for a region-scoped user (SPEC.md section 10): theirs when
    /// none was asked, 403 when another was; unchanged for everyone else.
    static func scoped(_ region: String?, _ context: MeterRequestContext) throws(DashboardError) -> String? {
        guard let scope = context.regionScope else { return region }
        guard let region else { return scope }
        try self.allow(region, context, what: "region \(region)")
        return region
    }

    /// 403 unless the user sees `region`.
    static func allow(_ region: String, _ context: MeterRequestContext, what: String) throws(DashboardError) {
        guard let scope = context.regionScope, region != scope else { return }
        throw DashboardError.forbidden("User \(context.user?.username ?? "") sees region \(scope) only; \(what) is not in it.")
    }

    /// 403 unless the user sees the meter's region; 404 for a meter meterd does not know.
    func allowMeter(_ name: String, _ context: MeterRequestContext) async throws {
        guard context.regionScope != nil else { return }
        guard let region = try await self.queries.region(ofMeter: name) else { throw DashboardError.notFound("No meter \(name).") }
        try Self.allow(region, context, what: "meter \(name)")
    }

    // MARK: Parameters

    /// `from` and `to` as `YYYY-MM`; missing ones default as the KPI engine does.
    func period(_ query: FlatDictionary<Substring, Substring>) throws(DashboardError) -> KPIPeriod {
        let from = Self.nonEmpty(query["from"])
        let to = Self.nonEmpty(query["to"])
        do throws(KPIError) {
            return try KPIPeriod.parse(from: from, to: to, nowMs: WallClock.nowMs(), timeZone: self.queries.kpi.settings.timeZone)
        } catch {
            throw DashboardError.badRequest(error.description)
        }
    }

    static func region(_ query: FlatDictionary<Substring, Substring>) throws(DashboardError) -> String? {
        guard let region = self.nonEmpty(query["region"]) else { return nil }
        guard region.count <= self.maximumRegionLength else {
            throw DashboardError.badRequest("region: longer than \(self.maximumRegionLength) characters")
        }
        return region
    }

    static func pageRequest(_ query: FlatDictionary<Substring, Substring>) throws(DashboardError) -> CustomerPageRequest {
        var request = CustomerPageRequest()
        if let sort = self.nonEmpty(query["sort"]) {
            guard let key = CustomerSortKey(rawValue: sort) else {
                throw DashboardError.badRequest(
                    "sort: expected one of \(CustomerSortKey.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(sort)\"")
            }
            request.sort = key
            request.descending = key != .customerID
        }
        if let order = self.nonEmpty(query["order"]) {
            switch order {
            case "asc": request.descending = false
            case "desc": request.descending = true
            default: throw DashboardError.badRequest("order: expected asc or desc, got \"\(order)\"")
            }
        }
        request.page = try self.integer(query, "page", default: 1, range: 1...1_000_000)
        request.perPage = try self.integer(query, "per_page", default: 25, range: 1...CustomerPageRequest.maximumPerPage)
        return request
    }

    static func integer(
        _ query: FlatDictionary<Substring, Substring>, _ name: String, default value: Int,
        range: ClosedRange<Int>
    ) throws(DashboardError) -> Int {
        guard let text = self.nonEmpty(query[Substring(name)]) else { return value }
        guard let number = Int(text), range.contains(number) else {
            throw DashboardError.badRequest("\(name): expected a whole number from \(range.lowerBound) to \(range.upperBound), got \"\(text)\"")
        }
        return number
    }

    static func nonEmpty(_ value: Substring?) -> String? {
        guard let value, !value.isEmpty else { return nil }
        return String(value)
    }

    /// A path parameter, percent-decoded (the router leaves `%20` as it is).
    static func pathParameter(_ context: MeterRequestContext, _ name: String) throws(DashboardError) -> String {
        guard let raw = context.parameters.get(name), let text = raw.removingPercentEncoding, !text.isEmpty else {
            throw DashboardError.badRequest("\(name): missing or not percent-encoded properly")
        }
        return text
    }

    /// A meter id as SPEC.md section 2 allows it: 1–64 of `A-Z a-z 0-9 . _ : -`.
    static func meterName(_ context: MeterRequestContext) throws(DashboardError) -> String {
        let name = try self.pathParameter(context, "id")
        guard MeterID.isValid(name) else {
            throw DashboardError.badRequest("meter id: expected \(MeterID.syntax), got \"\(name.prefix(80))\"")
        }
        return name
    }

    static func json(_ text: String) -> Response {
        Response(
            status: .ok, headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(string: text + "\n")))
    }
}
