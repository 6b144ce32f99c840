import Hummingbird

/// `/api/alerts?state=firing|resolved|all&limit=N` (SPEC.md section 11): the alerts the dashboard's
/// panel lists, firing ones first, as ``AlertListAnswer``.
///
/// ```swift
/// AlertRoutes(engine: engine).register(on: router)
/// ```
package struct AlertRoutes: Sendable {
    package let engine: AlertEngine

    package init(engine: AlertEngine) {
        self.engine = engine
    }

    package func register(on router: Router<MeterRequestContext>) {
        router.get("api/alerts") { request, _ in
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
            return DashboardRoutes.json(try AnswerEncoder.json(try await self.engine.list(filter, limit: limit)))
        }
    }
}
