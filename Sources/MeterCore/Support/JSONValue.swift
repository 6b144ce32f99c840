import Foundation

/// A JSON value with ordered object keys, for the status socket's answers and the KPI document.
///
/// Keys keep the order they are written in, so answers read the same every time.
package indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])
    /// Already-serialised JSON, inserted as is (a KPI document from elsewhere).
    case raw(String)

    package static func == (lhs: JSONValue, rhs: JSONValue) -> Bool { lhs.serialized == rhs.serialized }

    package static func int(_ value: Int) -> JSONValue { .int(Int64(value)) }

    /// A number, or `null` when there is none (or it is not finite).
    package static func number(_ value: Double?) -> JSONValue {
        guard let value, value.isFinite else { return .null }
        return .double(value)
    }

    /// `null` for `nil`, otherwise the value.
    package static func optional<T>(_ value: T?, _ wrap: (T) -> JSONValue) -> JSONValue {
        value.map(wrap) ?? .null
    }

    /// One line of JSON, no trailing newline.
    package var serialized: String {
        var out = ""
        self.write(into: &out)
        return out
    }

    private func write(into out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let value): out += value ? "true" : "false"
        case .int(let value): out += String(value)
        case .double(let value):
            if !value.isFinite {
                out += "null"
            } else if value == value.rounded(), abs(value) < 1e15 {
                out += String(Int64(value))
            } else {
                out += String(value)
            }
        case .string(let value): out += JSONText.quoted(value)
        case .array(let values):
            out += "["
            for (index, value) in values.enumerated() {
                if index > 0 { out += "," }
                value.write(into: &out)
            }
            out += "]"
        case .object(let pairs):
            out += "{"
            for (index, (key, value)) in pairs.enumerated() {
                if index > 0 { out += "," }
                out += JSONText.quoted(key)
                out += ":"
                value.write(into: &out)
            }
            out += "}"
        case .raw(let text): out += text
        }
    }

    /// The error line of the status socket: `{"error":"<code>","detail":"…"}`.
    package static func error(_ code: String, _ detail: String) -> JSONValue {
        .object([("error", .string(code)), ("detail", .string(detail))])
    }
}
