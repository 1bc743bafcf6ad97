"""Print the total revenue of a sales CSV file (columns: region, units, price)."""
import csv
import sys


def total_revenue(path):
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return sum(float(row["price"]) for row in rows)


if __name__ == "__main__":
    print(f"total revenue: {total_revenue(sys.argv[1]):.2f}")
