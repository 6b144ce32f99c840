import ArgumentParser
import Foundation
import MeterCore

extension AlertFilter: ExpressibleByArgument {}

extension MeterCtl {
    /// `meterctl alerts`: reads the alerts from the database file, so it works whether or not meterd runs.
    struct Alerts: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Alerts from the database: firing ones first (oldest first), then resolved ones (newest first).",
            discussion: """
                Reads the database file directly (meterd need not run): --db, else $METERD_DATABASE, else \
                /var/lib/meterd/meterd.sqlite when it exists, else ./meterd-data/meterd.sqlite.
                """)
        @Option(help: "Which alerts: firing, resolved or all.")
        var state: AlertFilter = .all
        @Option(help: "List at most this many alerts.")
        var limit: Int = 100
        @Option(help: "The database file.")
        var db: String?
        // --json (and --socket, unused here) as every subcommand takes them.
        @OptionGroup var options: ConnectionOptions

        func validate() throws {
            guard (1...1_000_000).contains(self.limit) else { throw ValidationError("Please give a limit from 1 to 1000000.") }
        }

        var path: String {
            if let db = self.db { return db }
            if let path = ProcessInfo.processInfo.environment["METERD_DATABASE"], !path.isEmpty { return path }
            let systemd = "/var/lib/meterd/meterd.sqlite"
            return FileManager.default.fileExists(atPath: systemd) ? systemd : "./meterd-data/meterd.sqlite"
        }

        func run() async throws {
            let path = self.path
            guard FileManager.default.fileExists(atPath: path) else { ConnectionOptions.fail("no database at \(path)", code: 1) }
            let answer: AlertListAnswer
            do {
                let store = try SQLiteMeterStore(path: path)
                let (alerts, firing) = try await store.alerts(state: self.state.state, limit: self.limit)
                answer = AlertListAnswer(firing: firing, alerts: alerts.map(\.answer))
            } catch {
                ConnectionOptions.fail("\(error)", code: 1)
            }
            print(
                self.options.json ? try AnswerEncoder.json(answer) : OperatorOutput.alerts(answer, filter: self.state),
                terminator: self.options.json ? "\n" : "")
        }
    }
}
