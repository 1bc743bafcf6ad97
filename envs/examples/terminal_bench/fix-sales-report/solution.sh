sed -i 's/sum(float(row\["price"\]) for row in rows)/sum(int(row["units"]) * float(row["price"]) for row in rows)/' report.py
python3 report.py sales.csv
