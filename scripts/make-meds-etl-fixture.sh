#!/usr/bin/env bash
# Rebuild tests/fixtures/meds_etl/: a small `leader synth --format mimic4` draw (raw/) and what
# meds_etl's MIMIC-IV converter (meds_etl_mimic, not written here) makes of it (meds/).
# meds_etl needs polars < 2, so it runs in its own virtual environment, never the project's:
#   python3.11 -m venv /tmp/medsetl-venv && /tmp/medsetl-venv/bin/pip install "polars<2" meds-etl==0.3.11
# Usage: scripts/make-meds-etl-fixture.sh [MEDS_ETL_VENV] [PATIENTS] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-/tmp/medsetl-venv}"
PATIENTS="${2:-150}"
SEED="${3:-7}"
OUT=tests/fixtures/meds_etl
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PY="${PYTHON:-python}"
"$PY" -m leader.cli synth --format mimic4 --patients "$PATIENTS" --seed "$SEED" --out "$WORK/synth"
# meds_etl wants <root>/2.2/{hosp,icu}/ and every table it converts; synth writes the hosp/ tables
# leader reads, the others stand in as header-only files (columns from the MIMIC-IV v2.2 schema).
mkdir -p "$WORK/mimic/2.2/hosp" "$WORK/mimic/2.2/icu"
cp "$WORK"/synth/hosp/*.csv.gz "$WORK/mimic/2.2/hosp/"
header() { printf '%s\n' "$2" | gzip -c > "$WORK/mimic/2.2/$1.csv.gz"; }
header icu/datetimeevents "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valueuom,warning"
header icu/inputevents "subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,itemid,amount,amountuom,rate,rateuom,orderid,linkorderid,ordercategoryname,secondaryordercategoryname,ordercomponenttypedescription,ordercategorydescription,patientweight,totalamount,totalamountuom,isopenbag,continueinnextdept,statusdescription,originalamount,originalrate"
header icu/chartevents "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valuenum,valueuom,warning"
header icu/procedureevents "subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,itemid,value,valueuom,location,locationcategory,orderid,linkorderid,ordercategoryname,ordercategorydescription,patientweight,isopenbag,continueinnextdept,statusdescription,originalamount,originalrate"
header icu/ingredientevents "subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,itemid,amount,amountuom,rate,rateuom,orderid,linkorderid,statusdescription,originalamount,originalrate"
header icu/outputevents "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valueuom"
header hosp/drgcodes "subject_id,hadm_id,drg_type,drg_code,description,drg_severity,drg_mortality"
header hosp/hcpcsevents "subject_id,hadm_id,chartdate,hcpcs_cd,seq_num,short_description"
header hosp/labevents "labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,storetime,value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,comments"
header hosp/microbiologyevents "microevent_id,subject_id,hadm_id,micro_specimen_id,order_provider_id,chartdate,charttime,spec_itemid,spec_type_desc,test_seq,storedate,storetime,test_itemid,test_name,org_itemid,org_name,isolate_num,quantity,ab_itemid,ab_name,dilution_text,dilution_comparison,dilution_value,interpretation,comments"
header hosp/omr "subject_id,chartdate,seq_num,result_name,result_value"
header hosp/services "subject_id,hadm_id,transfertime,prev_service,curr_service"
header hosp/transfers "subject_id,hadm_id,transfer_id,eventtype,careunit,intime,outtime"
"$VENV/bin/meds_etl_mimic" "$WORK/mimic" "$WORK/meds" --num_shards 2 --num_proc 1 --backend polars
rm -rf "$OUT/raw" "$OUT/meds"
mkdir -p "$OUT/raw"
cp -r "$WORK/synth/hosp" "$OUT/raw/hosp"
cp -r "$WORK/meds" "$OUT/meds"
"$VENV/bin/pip" freeze | grep -i -E '^(meds|polars)' > "$OUT/VERSIONS.txt"
echo "patients=$PATIENTS seed=$SEED" >> "$OUT/VERSIONS.txt"
du -sh "$OUT"
