import Foundation

/// The monthly counts of company events the KPIs read (`company_rollup`), rebuilt from the event
/// tables in the transaction of the import that changed them. Plain SQL that PostgreSQL also runs,
/// with `paid` (0 or 1 in SQLite, a boolean there) cast to an integer.
enum CompanyRollups {
    static let queries: [String: String] = [
        "installed": """
        SELECT 'installed', COALESCE(installed_month, 0), region, 0, COUNT(*), 0 FROM customer
        GROUP BY COALESCE(installed_month, 0), region
        """,
        "bill": """
        SELECT 'bill', b.month, COALESCE(c.region, 'Unassigned'), CAST(b.paid AS integer), COUNT(*), SUM(b.amount)
        FROM bill b LEFT JOIN customer c ON c.id = b.customer_id
        GROUP BY b.month, COALESCE(c.region, 'Unassigned'), b.paid
        """,
        "feedback": """
        SELECT 'feedback', f.month, COALESCE(c.region, 'Unassigned'), f.score, COUNT(*), SUM(f.score)
        FROM feedback f LEFT JOIN customer c ON c.id = f.customer_id
        GROUP BY f.month, COALESCE(c.region, 'Unassigned'), f.score
        """,
        "complaint_received": """
        SELECT 'complaint_received', k.month, COALESCE(c.region, 'Unassigned'), 0, COUNT(*), 0
        FROM complaint k LEFT JOIN customer c ON c.id = k.customer_id
        GROUP BY k.month, COALESCE(c.region, 'Unassigned')
        """,
        "complaint_resolved": """
        SELECT 'complaint_resolved', k.resolved_month, COALESCE(c.region, 'Unassigned'), 0, COUNT(*), 0
        FROM complaint k LEFT JOIN customer c ON c.id = k.customer_id WHERE k.resolved_month IS NOT NULL
        GROUP BY k.resolved_month, COALESCE(c.region, 'Unassigned')
        """,
        "installation": """
        SELECT 'installation', i.installed_month, COALESCE(c.region, 'Unassigned'), COALESCE(i.technician_id, 0), COUNT(*), SUM(i.days)
        FROM installation i LEFT JOIN customer c ON c.id = i.customer_id
        GROUP BY i.installed_month, COALESCE(c.region, 'Unassigned'), COALESCE(i.technician_id, 0)
        """,
        "maintenance_received": """
        SELECT 'maintenance_received', m.request_month, COALESCE(c.region, 'Unassigned'), m.technician_id, COUNT(*), 0
        FROM maintenance m LEFT JOIN customer c ON c.id = m.customer_id
        GROUP BY m.request_month, COALESCE(c.region, 'Unassigned'), m.technician_id
        """,
        "maintenance_resolved": """
        SELECT 'maintenance_resolved', m.resolution_month, COALESCE(c.region, 'Unassigned'), m.technician_id, COUNT(*), SUM(m.resolution_days)
        FROM maintenance m LEFT JOIN customer c ON c.id = m.customer_id WHERE m.resolution_month IS NOT NULL
        GROUP BY m.resolution_month, COALESCE(c.region, 'Unassigned'), m.technician_id
        """,
    ]
}
