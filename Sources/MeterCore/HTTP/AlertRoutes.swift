import Hummingbird

/// `/api/alerts?state=firing|resolved|all&limit=N` (SPEC.md section 11): the alerts the dashboard's
/// panel lists, firing ones first, as ``AlertListAnswer``.
///
/// ```swift
/// AlertRoutes(engine: engine).register(on: router)
/// ```
package struct AlertRoutes: Sendable {
    package let engine: AlertEngine
    /// A meter's region, for region-scoped users; `nil` for a meter meterd does not know.
    package let regionOfMeter: @Sendable (String) async throws -> String?

    package init(engine: AlertEngine, regionOfMeter: @escaping @Sendable (String) async throws -> String?) {
        self.engine = engine
        self.regionOfMeter = regionOfMeter
    }

    package func register(on router: Router<MeterRequestContext>) {
        router.get("api/alerts") { request, context in
            let query = request.uri.queryParameters
            let filter: AlertFilter
            if let text = DashboardRoutes.nonEmpty(query["state"]) {
                guard let given = AlertFilter(rawValue: text) else {
                    throw DashboardError.badRequest("state: expected firing, resolved or all, got \"\(text.prefix(80))\"")
                }
                filter = given
            } else {
                filter = .all
            }
            let limit = try DashboardRoutes.integer(query, "limit", default: 100, range: 1...10_000)
            guard let scope = context.regionScope else {
                return DashboardRoutes.json(try AnswerEncoder.json(try await self.engine.list(filter, limit: limit)))
            }
            // The region's alerts may be anywhere in the listing: scope all of it, then cut.
            var scoped = try await self.engine.list(filter, limit: 10_000).scoped(to: scope, regionOfMeter: self.regionOfMeter)
            scoped.alerts = Array(scoped.alerts.prefix(limit))
            return DashboardRoutes.json(try AnswerEncoder.json(scoped))
        }
    }
}
