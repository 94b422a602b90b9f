"""What ``cloome prepare --help`` (and the README's "Bring your own images") says about each input layout."""

PREPARE_EPILOG = """\
input kinds (--kind; the library's load_cell_painting(kind=...) and the manifest's source_kind are the
same names):

  tiff      a folder of 16-bit TIFFs, one file per channel, and an index CSV (--index) with one row per site:
            SAMPLE_KEY (unique), PLATE_ID, WELL_POSITION, SITE (integer), SMILES (a site without one is
            skipped and listed in the report; LoadData tables keep such sites), optional INCHIKEY (computed when absent), and IMG_Mito, IMG_ERSyto,
            IMG_ERSytoBleed, IMG_Ph_golgi, IMG_Hoechst: file paths relative to --root (or to --root/PLATE_ID),
            the .tif / .tiff extension optional. Any other column is kept as metadata.

              SAMPLE_KEY,PLATE_ID,WELL_POSITION,SITE,SMILES,IMG_Mito,IMG_ERSyto,IMG_ERSytoBleed,IMG_Ph_golgi,IMG_Hoechst
              P1-A01-1,P1,A01,1,CCO,P1/A01_s1_Mito.tif,P1/A01_s1_ERSyto.tif,P1/A01_s1_ERSytoBleed.tif,P1/A01_s1_Ph_golgi.tif,P1/A01_s1_Hoechst.tif
              P1-A01-2,P1,A01,2,CCO,P1/A01_s2_Mito.tif,P1/A01_s2_ERSyto.tif,P1/A01_s2_ERSytoBleed.tif,P1/A01_s2_Ph_golgi.tif,P1/A01_s2_Hoechst.tif
              P1-A02-1,P1,A02,1,CC(=O)Oc1ccccc1C(=O)O,P1/A02_s1_Mito.tif,P1/A02_s1_ERSyto.tif,P1/A02_s1_ERSytoBleed.tif,P1/A02_s1_Ph_golgi.tif,P1/A02_s1_Hoechst.tif
              P1-A03-1,P1,A03,1,CS(C)=O,P1/A03_s1_Mito.tif,P1/A03_s1_ERSyto.tif,P1/A03_s1_ERSytoBleed.tif,P1/A03_s1_Ph_golgi.tif,P1/A03_s1_Hoechst.tif

            Without --index the index is inferred from the file names under --root and written to
            OUTPUT_DIR/inferred_index.csv for you to check: PLATE/[PREFIX_]A01_s1_CHANNEL.tif (CHANNEL a name
            above or DNA, ER, RNA, AGP, any case, or a token --channels maps, e.g. w1=Hoechst), or Phenix /
            Harmony PLATE/r01c01f01p01-ch1sk1fk1fl1.tiff (--channels 1=Hoechst,2=ERSyto,...). The molecules
            come from --wells, a CSV with the columns plate, well, smiles (other columns are kept):

              plate,well,smiles
              P1,A01,CCO
              P1,A02,CC(=O)Oc1ccccc1C(=O)O
              P1,A03,CS(C)=O
              P2,A01,Cn1cnc2c1c(=O)n(C)c(=O)n2C

  bray_npz  Bray et al. 2017 pre-processed sites: the same index without IMG_ columns, and --root holding
            SAMPLE_KEY.npz for each row (array "sample", uint8 H x W x 5 in the channel order above):

              SAMPLE_KEY,PLATE_ID,WELL_POSITION,SITE,SMILES,INCHIKEY
              24277-A01-1,24277,A01,1,CCO,LFQSCWFLJHTTHZ-UHFFFAOYSA-N
              24277-A01-2,24277,A01,2,CCO,LFQSCWFLJHTTHZ-UHFFFAOYSA-N
              24277-A02-1,24277,A02,1,CC(=O)Oc1ccccc1C(=O)O,
              24278-B05-3,24278,B05,3,Cn1cnc2c1c(=O)n(C)c(=O)n2C,

  jump      a CellProfiler LoadData table (--load_data; CSV, CSV.gz or Parquet, local or a URL), one row per
            site: Metadata_Plate, Metadata_Well, Metadata_Site, and per channel URL_OrigDNA (or FileName_OrigDNA
            + PathName_OrigDNA) for DNA, ER, RNA, AGP, Mito; optional URL_IllumDNA ... (illumination functions,
            .npy). The molecules come from Metadata_SMILES / Metadata_InChIKey / Metadata_JCP2022 columns, or
            --compounds (and --wells for cpg0016's well table):

              Metadata_Plate,Metadata_Well,Metadata_Site,Metadata_SMILES,FileName_OrigDNA,PathName_OrigDNA,FileName_OrigER,PathName_OrigER,FileName_OrigRNA,PathName_OrigRNA,FileName_OrigAGP,PathName_OrigAGP,FileName_OrigMito,PathName_OrigMito
              P1,A01,1,CCO,A01_s1_DNA.tif,/data/P1,A01_s1_ER.tif,/data/P1,A01_s1_RNA.tif,/data/P1,A01_s1_AGP.tif,/data/P1,A01_s1_Mito.tif,/data/P1
              P1,A01,2,CCO,A01_s2_DNA.tif,/data/P1,A01_s2_ER.tif,/data/P1,A01_s2_RNA.tif,/data/P1,A01_s2_AGP.tif,/data/P1,A01_s2_Mito.tif,/data/P1
              P1,A02,1,CC(=O)Oc1ccccc1C(=O)O,A02_s1_DNA.tif,/data/P1,A02_s1_ER.tif,/data/P1,A02_s1_RNA.tif,/data/P1,A02_s1_AGP.tif,/data/P1,A02_s1_Mito.tif,/data/P1
              P1,A03,1,CS(C)=O,A03_s1_DNA.tif,/data/P1,A03_s1_ER.tif,/data/P1,A03_s1_RNA.tif,/data/P1,A03_s1_AGP.tif,/data/P1,A03_s1_Mito.tif,/data/P1

Sites that cannot be read, or whose SMILES RDKit rejects, are left out (--errors skip) and listed with the
reason in OUTPUT_DIR/prepare_report.json; more than --max_skipped_fraction of them, or none written, fails.
"""

__all__ = ["PREPARE_EPILOG"]
