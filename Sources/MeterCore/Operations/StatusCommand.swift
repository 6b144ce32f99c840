/// One command of the status socket (SPEC.md section 6), parsed from its line.
package enum StatusCommand: Equatable, Sendable {
    case status
    /// Inactive meters, at most `limit` listed (the count is always complete).
    case inactive(limit: Int)
    case meter(String)
    case kpi(from: Month?, to: Month?, region: String?)
    case snapshot
    /// Imports the company CSV files of a directory (the rest of the line, so it may hold spaces).
    case importDirectory(String)
    /// Writes a consistent copy of the database to a new file (the rest of the line).
    case backup(String)
    /// Where a running import stands (answers at once, for a progress display).
    case progress
    /// The alerts, as `/api/alerts` lists them.
    case alerts(AlertFilter, limit: Int)
    case help

    /// Commands and their arguments, for `help` and error messages.
    package static let usage =
        "status | inactive [LIMIT] | meter ID | kpi [FROM|- TO|- [REGION]] | snapshot | import DIR | progress | backup FILE | alerts [firing|resolved|all] [LIMIT] | help"

    package static let defaultInactiveLimit = 1_000
    package static let defaultAlertLimit = 100

    /// Parses one line: words separated by spaces; a region may contain spaces when it comes last.
    package init(line: String) throws(OperatorQueryError) {
        let words = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard let name = words.first else {
            throw OperatorQueryError("malformed_command", "empty command; expected \(Self.usage)")
        }
        let arguments = Array(words.dropFirst())
        func noArguments() throws(OperatorQueryError) {
            guard arguments.isEmpty else {
                throw OperatorQueryError("malformed_command", "\(name) takes no arguments")
            }
        }
        switch name.lowercased() {
        case "status":
            try noArguments()
            self = .status
        case "inactive":
            switch arguments.count {
            case 0: self = .inactive(limit: Self.defaultInactiveLimit)
            case 1:
                guard let limit = Int(arguments[0]), limit >= 0, limit <= 1_000_000 else {
                    throw OperatorQueryError("malformed_command", "inactive takes an optional limit from 0 to 1000000, got \"\(arguments[0])\"")
                }
                self = .inactive(limit: limit)
            default: throw OperatorQueryError("malformed_command", "inactive takes at most one argument, a limit")
            }
        case "meter":
            guard arguments.count == 1 else {
                throw OperatorQueryError("malformed_command", "meter takes exactly one argument, the meter id")
            }
            self = .meter(arguments[0])
        case "kpi":
            switch arguments.count {
            case 0: self = .kpi(from: nil, to: nil, region: nil)
            case 1: throw OperatorQueryError("malformed_command", "kpi takes FROM and TO together (YYYY-MM YYYY-MM), then an optional REGION")
            default:
                // `-` leaves a bound to the daemon's default period (in its own time zone).
                let from = arguments[0] == "-" ? nil : Month(arguments[0])
                guard arguments[0] == "-" || from != nil else {
                    throw OperatorQueryError("malformed_command", "FROM must be a month YYYY-MM or -, got \"\(arguments[0])\"")
                }
                let to = arguments[1] == "-" ? nil : Month(arguments[1])
                guard arguments[1] == "-" || to != nil else {
                    throw OperatorQueryError("malformed_command", "TO must be a month YYYY-MM or -, got \"\(arguments[1])\"")
                }
                if let from, let to, from > to {
                    throw OperatorQueryError("malformed_command", "FROM \(from) is after TO \(to)")
                }
                let region = arguments.count > 2 ? arguments.dropFirst(2).joined(separator: " ") : nil
                self = .kpi(from: from, to: to, region: region)
            }
        case "snapshot":
            try noArguments()
            self = .snapshot
        case "import", "backup":
            // The path is the rest of the line: the client sends it as typed, spaces included.
            let rest = line.drop { $0 == " " }.dropFirst(name.count).drop { $0 == " " }
            guard rest.hasPrefix("/") else {
                throw OperatorQueryError("malformed_command", "\(name) takes an absolute path, got \"\(rest.prefix(80))\"")
            }
            self = name.lowercased() == "import" ? .importDirectory(String(rest)) : .backup(String(rest))
        case "progress":
            try noArguments()
            self = .progress
        case "alerts":
            // Either argument may be left out: `alerts`, `alerts firing`, `alerts 20`, `alerts all 20`.
            var filter = AlertFilter.all
            var limit = Self.defaultAlertLimit
            var rest = arguments[...]
            if let first = rest.first, let chosen = AlertFilter(rawValue: first.lowercased()) {
                filter = chosen
                rest = rest.dropFirst()
            }
            if let text = rest.first {
                guard let number = Int(text), (1...1_000_000).contains(number) else {
                    throw OperatorQueryError(
                        "malformed_command", "alerts takes firing, resolved or all, then a limit from 1 to 1000000, got \"\(text.prefix(40))\"")
                }
                limit = number
                rest = rest.dropFirst()
            }
            guard rest.isEmpty else { throw OperatorQueryError("malformed_command", "alerts takes at most a state and a limit") }
            self = .alerts(filter, limit: limit)
        case "help":
            self = .help
        default:
            let shown = name.count > 40 ? String(name.prefix(40)) + "…" : name
            throw OperatorQueryError("unknown_command", "unknown command \"\(shown)\"; expected \(Self.usage)")
        }
    }
}

/// Answers status socket commands, one line of JSON each.
package struct StatusResponder: Sendable {
    package let reporter: StatusReporter

    package init(reporter: StatusReporter) {
        self.reporter = reporter
    }

    /// The answer to one command line, without its newline. Never throws: errors are answers too.
    package func answer(_ line: String, nowMs: Int64 = WallClock.nowMs()) async -> String {
        do {
            let command = try StatusCommand(line: line)
            return try await self.answer(command, nowMs: nowMs)
        } catch let error as OperatorQueryError {
            return JSONValue.error(error.code, error.detail).serialized
        } catch {
            return JSONValue.error("internal", "\(error)").serialized
        }
    }

    private func answer(_ command: StatusCommand, nowMs: Int64) async throws -> String {
        let queries = self.reporter.queries
        switch command {
        case .status:
            return try AnswerEncoder.json(await self.reporter.status(nowMs: nowMs))
        case .inactive(let limit):
            let inactive = try await queries.inactiveMeters(nowMs: nowMs, limit: limit)
            return try AnswerEncoder.json(InactiveMetersAnswer(inactive, nowMs: nowMs))
        case .meter(let name):
            guard let meter = try await queries.meter(name, nowMs: nowMs) else {
                throw OperatorQueryError("unknown_meter", "unknown meter \(name)")
            }
            return try AnswerEncoder.json(MeterDetailAnswer(meter))
        case .kpi(let from, let to, let region):
            return try AnswerEncoder.json(try await queries.kpi(from: from, to: to, region: region))
        case .snapshot:
            return try AnswerEncoder.json(SnapshotAnswer(snapshot: try await queries.snapshot()))
        case .importDirectory(let path):
            return try AnswerEncoder.json(try await queries.importDirectory(path))
        case .backup(let path):
            return try AnswerEncoder.json(try await queries.backup(to: path))
        case .alerts(let filter, let limit):
            return try AnswerEncoder.json(try await queries.alerts(filter, limit: limit))
        case .progress:
            let progress = queries.importProgress().map {
                ImportProgressAnswer.Progress(file: $0.file, rows: $0.rows, fraction: $0.fraction)
            }
            return try AnswerEncoder.json(ImportProgressAnswer(import: progress))
        case .help:
            return JSONValue.object([("commands", .string(StatusCommand.usage))]).serialized
        }
    }
}
