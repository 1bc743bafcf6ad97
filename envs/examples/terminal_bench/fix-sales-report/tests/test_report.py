import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROWS = "region,units,price\nnorth,3,2.50\nsouth,4,1.25\neast,2,4.00\nwest,1,3.00\n"


class ReportTest(unittest.TestCase):
    def run_report(self, csv_path):
        return subprocess.run([sys.executable, "/work/report.py", str(csv_path)], capture_output=True, text=True)

    def test_the_given_data(self):
        self.assertEqual(self.run_report("/work/sales.csv").stdout, "total revenue: 23.50\n")

    def test_other_data(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "other.csv"
            path.write_text("region,units,price\nx,10,0.10\ny,0,99.00\n")
            self.assertEqual(self.run_report(path).stdout, "total revenue: 1.00\n")
