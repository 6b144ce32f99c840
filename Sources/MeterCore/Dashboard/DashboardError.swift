import Hummingbird
import HTTPTypes
import NIOCore

/// A dashboard API request that cannot be answered, as the client should see it:
/// `{"error":"<code>","message":"…"}` with its HTTP status.
///
/// ```swift
/// throw DashboardError.notFound("No customer 42.")
/// ```
package struct DashboardError: Error, HTTPResponseError, CustomStringConvertible, Equatable {
    package var status: HTTPResponse.Status
    /// Machine-readable code: `bad_request`, `not_found`, `unavailable`, `unauthorized`, `forbidden`.
    package var code: String
    /// A sentence the operator can act on.
    package var message: String

    package init(_ status: HTTPResponse.Status, code: String, message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    package static func badRequest(_ message: String) -> DashboardError {
        DashboardError(.badRequest, code: "bad_request", message: message)
    }

    package static func notFound(_ message: String) -> DashboardError {
        DashboardError(.notFound, code: "not_found", message: message)
    }

    /// 403: the user's scope does not reach what was asked (another region's figures).
    package static func forbidden(_ message: String) -> DashboardError {
        DashboardError(.forbidden, code: "forbidden", message: message)
    }

    /// The error as a response, for code outside a route (the access checks).
    package var plainResponse: Response {
        Response(
            status: self.status, headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(string: self.json.serialized + "\n")))
    }

    package var description: String { "\(self.status.code) \(self.code): \(self.message)" }

    /// The error as JSON.
    package var json: JSONValue {
        .object([("error", .string(self.code)), ("message", .string(self.message)), ("status", .int(self.status.code))])
    }

    package func response(from request: Request, context: some RequestContext) throws -> Response {
        Response(
            status: self.status, headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(string: self.json.serialized + "\n")))
    }
}
