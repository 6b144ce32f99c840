import ArgumentParser
import Foundation
import MeterCore

/// `meterctl`: asks a running meterd through its status socket (SPEC.md section 6).
@main
struct MeterCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meterctl",
        abstract: "Asks a running meterd how it is doing, through its status socket; imports the company's data.",
        discussion: """
            The socket is --socket, else $METERD_STATUS_SOCKET, else /run/meterd/status.sock when it \
            exists, else ./meterd-data/status.sock. Errors print one line and exit non-zero: 1 when \
            meterd answered with an error (such as an unknown meter), 3 when meterd cannot be reached. \
            kpi and import also work without a daemon, on a database file given with --db or a store \
            given with --store URL (exit 1 when the file is missing, 3 when the store cannot be reached).
            """,
        version: MeterdVersion.current,
        subcommands: [
            Status.self, Inactive.self, Meter.self, KPI.self, Snapshot.self, ImportCommand.self, Backup.self, UserCommand.self, Alerts.self,
        ])

    // Declared here too so `meterctl --socket PATH status` works as well as `meterctl status --socket PATH`.
    @OptionGroup var options: ConnectionOptions

    /// Usage errors keep ArgumentParser's form (with the usage line); a command that fails says so
    /// in the same one-line form as every other meterctl error.
    static func main() async {
        var command: any ParsableCommand
        do {
            command = try Self.parseAsRoot()
        } catch {
            Self.exit(withError: error)
        }
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error where error is ExitCode || error is CleanExit || error is ValidationError {
            Self.exit(withError: error)
        } catch {
            // `--help` and `help CMD` parse as ArgumentParser's help command, whose run throws the help.
            if Self.exitCode(for: error) == .success { Self.exit(withError: error) }
            ConnectionOptions.fail("\(error)", code: 1)
        }
    }
}

/// Options every subcommand takes.
struct ConnectionOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Path of meterd's status socket.", valueName: "path"))
    var socket: String?

    @Flag(help: "Print meterd's answer as the raw JSON line.")
    var json = false

    var path: String { self.socket ?? StatusClient.defaultPath(environment: ProcessInfo.processInfo.environment) }

    /// Sends the command and prints the answer as JSON or, decoded as `Answer`, through `render`;
    /// exits non-zero on any error.
    func run<Answer: Decodable>(
        _ command: String, as answerType: Answer.Type, timeoutSeconds: Int = 30,
        render: (Answer) -> String
    ) throws {
        let line: String
        do {
            line = try StatusClient(path: self.path, timeoutSeconds: timeoutSeconds).send(command)
        } catch {
            Self.fail("\(error)", code: 3)
        }
        self.present(line, as: answerType, render: render)
    }

    /// Prints meterd's answer line as JSON or, decoded as `Answer`, through `render`; exits 1 on an error answer.
    func present<Answer: Decodable>(_ line: String, as answerType: Answer.Type, render: (Answer) -> String) {
        guard let answer = OperatorAnswer<Answer>(line: line) else {
            Self.fail("meterd sent an answer that is not the JSON expected: \(line.prefix(200))", code: 1)
        }
        switch answer {
        case .error(let code, let detail):
            if self.json { print(line) }
            Self.fail(detail.isEmpty ? code : detail, code: 1)
        case .value(let value):
            print(self.json ? line : render(value), terminator: self.json ? "\n" : "")
        }
    }

    static func fail(_ message: String, code: Int32) -> Never {
        FileHandle.standardError.write(Data("meterctl: \(message)\n".utf8))
        Foundation.exit(code)
    }
}

extension MeterCtl {
    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Live figures: readings, acks, queue, latency, meters by state.")
        @OptionGroup var options: ConnectionOptions

        func run() throws {
            try self.options.run("status", as: StatusAnswer.self, render: OperatorOutput.status)
        }
    }

    struct Inactive: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Meters that went silent, with when.")
        @OptionGroup var options: ConnectionOptions
        @Option(help: "List at most this many meters (the count covers all).")
        var limit: Int = StatusCommand.defaultInactiveLimit

        func validate() throws {
            guard (0...1_000_000).contains(self.limit) else { throw ValidationError("Please give a limit from 0 to 1000000.") }
        }

        func run() throws {
            try self.options.run("inactive \(self.limit)", as: InactiveMetersAnswer.self, render: OperatorOutput.inactive)
        }
    }

    struct Meter: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One meter: customer, region, last reading, status, counters.")
        @OptionGroup var options: ConnectionOptions
        @Argument(help: "The meter id, e.g. MTR-000123.")
        var id: String

        func validate() throws {
            guard !self.id.isEmpty else { throw ValidationError("Please give a meter id; it is empty.") }
            guard !self.id.contains(where: { $0 == " " || $0 == "\n" || $0 == "\r" }) else {
                throw ValidationError("Please give a meter id without spaces.")
            }
        }

        func run() throws {
            try self.options.run("meter \(self.id)", as: MeterDetailAnswer.self, render: OperatorOutput.meter)
        }
    }

    struct KPI: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "kpi", abstract: "The KPI document for a period and an optional region.",
            discussion: "Without --from and --to the period is the 12 months ending with the current one.")
        @OptionGroup var options: ConnectionOptions
        @Option(help: ArgumentHelp("First month of the period.", valueName: "YYYY-MM"))
        var from: String?
        @Option(help: ArgumentHelp("Last month of the period.", valueName: "YYYY-MM"))
        var to: String?
        @Option(help: "Only customers of this region.")
        var region: String?
        @Option(help: "Compute from this database file instead of asking meterd (meterd need not run).")
        var db: String?
        @Option(
            help: ArgumentHelp("Compute from this store (sqlite:PATH or postgresql://…) instead of asking meterd.", valueName: "url"))
        var store: String?
        @Option(
            help: ArgumentHelp(
                "With --db: IANA time zone of the calendar months (default: the zone meterd last ran with, else UTC).",
                valueName: "iana-name"))
        var timezone: String?

        func validate() throws {
            for (name, value) in [("--from", self.from), ("--to", self.to)] {
                if let value, Month(value) == nil { throw ValidationError("\(name) must be a month YYYY-MM, got \"\(value)\".") }
            }
            if let from = self.from.flatMap(Month.init), let to = self.to.flatMap(Month.init), from > to {
                throw ValidationError("--from \(from) is after --to \(to).")
            }
            if let region = self.region, region.isEmpty || region.contains(where: { $0 == "\n" || $0 == "\r" }) {
                throw ValidationError("Please give a region name on one line.")
            }
        }

        func run() async throws {
            if self.db != nil || self.store != nil {
                let text = try await KPIOptions(db: self.db, store: self.store, timezone: self.timezone).json(
                    from: self.from, to: self.to, region: self.region)
                print(self.options.json ? text : try KPITextReport.render(json: text), terminator: self.options.json ? "\n" : "")
                return
            }
            var command = "kpi"
            if self.from != nil || self.to != nil || self.region != nil {
                // `-` leaves a bound to meterd, which fills it in its own time zone.
                command += " \(self.from ?? "-") \(self.to ?? "-")"
                if let region = self.region { command += " \(region)" }
            }
            try self.options.run(command, as: KPIDocument.self) { KPITextReport.render($0) }
        }
    }

    struct Snapshot: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Writes a KPI snapshot now and prints its path.")
        @OptionGroup var options: ConnectionOptions

        func run() throws {
            try self.options.run("snapshot", as: SnapshotAnswer.self) { answer in "\(answer.snapshot)\n" }
        }
    }

    struct Backup: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Writes a consistent copy of the database to FILE while meters keep sending.",
            discussion: """
                meterd writes the file itself, so FILE must be a new path that meterd may write to. On SQLite it is a \
                database file; on PostgreSQL a pg_dump archive (custom format), which pg_restore loads into an empty database.
                """)
        @OptionGroup var options: ConnectionOptions
        @Argument(help: "Where the copy goes; it must not exist yet.")
        var file: String

        func run() throws {
            let path = self.file.hasPrefix("/") ? self.file : FileManager.default.currentDirectoryPath + "/" + self.file
            try self.options.run("backup \(path)", as: BackupAnswer.self, timeoutSeconds: 3600) { answer in
                "backup written to \(answer.backup) (\(answer.bytes) bytes)\n"
            }
        }
    }
}
