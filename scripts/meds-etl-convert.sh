#!/usr/bin/env bash
# Convert a MIMIC-IV hosp/ directory (e.g. `leader synth --format mimic4` output) to MEDS with
# meds_etl's MIMIC-IV converter (meds_etl_mimic; third-party, not part of leader).
# meds_etl needs polars < 2, so it runs from its own virtual environment, never the project's:
#   python3.11 -m venv /tmp/medsetl-venv && /tmp/medsetl-venv/bin/pip install "polars<2" meds-etl==0.3.11
# Usage: scripts/meds-etl-convert.sh MIMIC4_ROOT MEDS_OUT [MEDS_ETL_VENV]
set -euo pipefail
SRC="$1"; DST="$2"; VENV="${3:-/tmp/medsetl-venv}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/meds-etl.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# meds_etl wants <root>/2.2/{hosp,icu}/ and every table it converts: the hosp/ tables leader reads
# come from SRC, the others stand in as header-only files (columns of the MIMIC-IV v2.2 schema).
mkdir -p "$WORK/mimic/2.2/hosp" "$WORK/mimic/2.2/icu"
for t in admissions patients diagnoses_icd procedures_icd prescriptions; do
  ln -s "$(realpath "$SRC/hosp/$t.csv.gz")" "$WORK/mimic/2.2/hosp/$t.csv.gz"
done
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
rm -rf "$DST"
"$VENV/bin/meds_etl_mimic" "$WORK/mimic" "$DST" --num_shards "${MEDS_SHARDS:-2}" --num_proc 1 --backend polars
